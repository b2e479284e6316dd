"""CPython's own asyncio test suite on cdaphne's loop.

    python tests/asyncio_suite/run.py                 # the default modules
    python tests/asyncio_suite/run.py -m test_tasks   # one module
    python tests/asyncio_suite/run.py --json out.json # results per test id
    python tests/asyncio_suite/run.py --track-private  # tests poking loop._x

Runs modules of the `test.test_asyncio` package of the running Python
(it ships with pyenv's and python.org's builds; Debian splits it into
`libpython3.X-testsuite`) with unittest, one child process per module
under a timeout, so a crash or a hang costs one module, not the run.

In the child, every loop asyncio would create is cdaphne's
`LibuvEventLoop`, the way `uvloop.install()` makes uvloop the loop of a
program:
- the default event loop policy makes `LibuvEventLoop`s, so
  `asyncio.new_event_loop()`, `asyncio.run()`, `asyncio.Runner` and
  `IsolatedAsyncioTestCase` use it (also after a module's
  `set_event_loop_policy(None)`);
- `asyncio.SelectorEventLoop(...)` makes a `LibuvEventLoop` (a selector
  passed in is closed and ignored).  The suites that run once per stdlib
  selector (Epoll/Poll/Select/Kqueue) run once, renamed to
  `LibuvEventLoopTests`.
Tests that build a `TestLoop` (fake clock), a `BaseEventLoop` or a
`BaseSelectorEventLoop` with mocks still run on those: they test asyncio
itself.  Each result records whether the test created a LibuvEventLoop
(`on_libuv`), and the summary counts them.

`exclusions.txt` lists the tests expected not to pass, one per line:
    <id> <kind>[@<versions>] <reason>
`id` is `module.Class.test` (fnmatch patterns allowed), kind is `fail`
(runs and must fail or error: a pass is reported as an unexpected pass)
or `skip` (not run: hangs, crashes or tests a stdlib selector).
`@3.11` or `@3.12+` limits a line to those Python versions, `@asan` to a
run under ASan (`make test-asan`).  The run
fails on any unexpected failure, unexpected pass or crashed module.

--track-private records, per test, the private loop attributes (`_x`) the
test's own code reads or sets (through mock.patch.object is not seen): the
tests that may need an exclusion when a loop internal moves into C.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
EXCLUSIONS = os.path.join(HERE, "exclusions.txt")

DEFAULT_MODULES = [
    "test_events",
    "test_base_events",
    "test_tasks",
    "test_futures",
    "test_futures2",
    "test_streams",
    "test_subprocess",
    "test_sock_lowlevel",
    "test_timeouts",
    "test_taskgroups",
    "test_threads",
    "test_locks",
    "test_queues",
    "test_pep492",
    "test_context",
    "test_runners",
    "test_waitfor",
    "test_server",
    "test_sendfile",
    "test_buffered_proto",
    "test_unix_events",
    "test_eager_task_factory",
    "test_staggered",
    "test_protocols",
    "test_transports",
    "test_ssl",
    "test_sslproto",
]

# Test classes that run the same tests once per stdlib selector.  The
# first one found is kept (renamed LibuvEventLoopTests), the rest dropped.
PER_SELECTOR = (
    "EPollEventLoopTests",
    "PollEventLoopTests",
    "SelectEventLoopTests",
    "KqueueEventLoopTests",
)
PER_TEST_TIMEOUT = 120.0
MAX_CRASHES_PER_MODULE = 10
PRIVATE_ENV = "CDAPHNE_SUITE_TRACK_PRIVATE"


# ---------------------------------------------------------------- child


def install_libuv_loop(track_private=False):
    """Make every loop asyncio creates a LibuvEventLoop.

    Returns (a one-item list counting the loops made, the set of private
    loop attributes test code touched since it was last cleared)."""
    import asyncio
    import asyncio.events
    import asyncio.unix_events

    from cdaphne.loop import LibuvEventLoop

    created = [0]
    touched: set[str] = set()

    def _note(name):
        if name[:1] == "_" and name[:2] != "__":
            if "test_asyncio/test_" in sys._getframe(2).f_code.co_filename:
                touched.add(name)

    try:

        class SuiteLibuvEventLoop(LibuvEventLoop):
            def __init__(self, selector=None):
                if selector is not None:
                    selector.close()
                super().__init__()
                created[0] += 1

            if track_private:

                def __getattribute__(self, name):
                    _note(name)
                    return super().__getattribute__(name)

                def __setattr__(self, name, value):
                    _note(name)
                    super().__setattr__(name, value)

        SuiteLibuvEventLoop.__name__ = "LibuvEventLoop"
        factory = SuiteLibuvEventLoop
    except TypeError:  # a loop type that cannot be subclassed

        def factory(selector=None):
            if selector is not None:
                selector.close()
            created[0] += 1
            return LibuvEventLoop()

    class LibuvEventLoopPolicy(asyncio.unix_events.DefaultEventLoopPolicy):
        _loop_factory = factory

    for mod in (asyncio, asyncio.unix_events):
        mod.SelectorEventLoop = factory
        mod.DefaultEventLoopPolicy = LibuvEventLoopPolicy
        if hasattr(mod, "EventLoop"):
            mod.EventLoop = factory
    asyncio.set_event_loop_policy(LibuvEventLoopPolicy())
    return created, touched


def retarget_per_selector(module):
    keep = None
    for name in PER_SELECTOR:
        cls = module.__dict__.get(name)
        if cls is None:
            continue
        delattr(module, name)
        if keep is None:
            keep = cls
    if keep is not None:
        keep.__name__ = keep.__qualname__ = "LibuvEventLoopTests"
        module.LibuvEventLoopTests = keep


def iter_tests(suite):
    import unittest

    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def short_id(test_id):
    prefix = "test.test_asyncio."
    return test_id[len(prefix) :] if test_id.startswith(prefix) else test_id


def run_child(module_name, skip_patterns, done_path, out_path, per_test_timeout):
    """Run one module; append one JSON line per test to out_path."""
    import faulthandler
    import unittest

    created, touched = install_libuv_loop(os.environ.get(PRIVATE_ENV) == "1")
    module = importlib.import_module("test.test_asyncio." + module_name)
    retarget_per_selector(module)
    done = set()
    if done_path:
        with open(done_path) as f:
            done = set(f.read().split())
    out = open(out_path, "a", buffering=1)
    results = {}

    def record(tid, entry):
        out.write(json.dumps(dict(entry, id=tid)) + "\n")

    selected = unittest.TestSuite()
    for t in iter_tests(unittest.TestLoader().loadTestsFromModule(module)):
        tid = short_id(t.id())
        if tid in done:
            continue
        if any(fnmatch.fnmatchcase(tid, p) for p in skip_patterns):
            record(tid, {"outcome": "excluded", "on_libuv": None})
            continue
        selected.addTest(t)

    class Result(unittest.TextTestResult):
        # 3.12.1's unittest stops a test whose setUpClass skipped it without
        # starting it: such a test ran nothing, on no loop.
        _started = None

        def startTest(self, test):
            self._started = test
            self._created = created[0]
            self._t0 = time.monotonic()
            touched.clear()
            print("START", short_id(test.id()), flush=True)
            faulthandler.dump_traceback_later(per_test_timeout, exit=True)
            super().startTest(test)

        def stopTest(self, test):
            faulthandler.cancel_dump_traceback_later()
            super().stopTest(test)
            tid = short_id(test.id())
            entry = results.pop(tid, {"outcome": "pass"})
            started, self._started = self._started is test, None
            entry["on_libuv"] = started and created[0] > self._created
            entry["seconds"] = round(time.monotonic() - self._t0, 3) if started else 0.0
            if touched:
                entry["private"] = sorted(touched)
            record(tid, entry)

        def _set(self, test, outcome, detail=None):
            tid = short_id(test.id())
            entry = {"outcome": outcome}
            if detail:
                entry["detail"] = (results.get(tid, {}).get("detail", "") + detail)[-4000:]
            results[tid] = entry
            if not isinstance(test, unittest.TestCase):  # setUpModule/Class errors
                record(tid, results.pop(tid))

        def addError(self, test, err):
            super().addError(test, err)
            self._set(test, "error", self._exc_info_to_string(err, test))

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._set(test, "fail", self._exc_info_to_string(err, test))

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._set(test, "skip", reason)

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            self._set(test, "pass")  # the stdlib's own expectation held

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._set(test, "fail", "unexpected success (stdlib expectedFailure)")

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                kind = "fail" if issubclass(err[0], test.failureException) else "error"
                self._set(test, kind, self._exc_info_to_string(err, test))

    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=0, resultclass=Result)
    runner.run(selected)
    out.write(json.dumps({"id": None, "end": True}) + "\n")
    out.close()
    # Threads or loops a test left behind must not hang the exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------- parent


@dataclass
class Exclusion:
    pattern: str
    kind: str
    reason: str
    used: bool = False


def under_asan():
    """Whether this run has ASan preloaded (make test-asan)."""
    return "libasan" in os.environ.get("LD_PRELOAD", "")


def version_matches(spec, version=sys.version_info[:2]):
    if spec.endswith("+"):
        return version >= tuple(int(x) for x in spec[:-1].split("."))
    return version == tuple(int(x) for x in spec.split("."))


def load_exclusions(path):
    out = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 2)
            if len(parts) < 3:
                raise SystemExit(f"{path}:{lineno}: needs '<id> <kind> <reason>'")
            pattern, kind, reason = parts
            kind, _, versions = kind.partition("@")
            if kind not in ("fail", "skip"):
                raise SystemExit(f"{path}:{lineno}: kind must be fail or skip: {kind}")
            if versions == "asan":
                if not under_asan():
                    continue
            elif versions and not version_matches(versions):
                continue
            out.append(Exclusion(pattern, kind, reason))
    return out


def run_child_process(cmd, env, timeout):
    """Runs one child in a session of its own: (exit status, stdout, stderr).
    Waits for the child itself, not for the end of its output: a process a
    test forked (TestFork) keeps the child's stdout open and, if it hangs,
    would hold the parent until the module timeout.  What is left of the
    session once the child has ended is killed."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, text=True, env=env, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        returncode = proc.wait()
        out.seek(0)
        err.seek(0)
        return returncode, out.read(), err.read()


def run_module(
    module, exclusions, timeout, per_test_timeout, verbose, debug=False, track_private=False
):
    """Run one module in child processes; a test that crashes or hangs its
    child is recorded as "crash" and the module resumes after it.

    Returns (results by id, seconds, None) or (None, seconds, why) when the
    module could not run at all."""
    skips = [e.pattern for e in exclusions if e.kind == "skip"]
    env = dict(os.environ, PYTHONASYNCIODEBUG="1" if debug else "", PYTHONWARNINGS="")
    env[PRIVATE_ENV] = "1" if track_private else ""
    results = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.jsonl")
        done_path = os.path.join(tmp, "done.txt")
        for _ in range(MAX_CRASHES_PER_MODULE + 1):
            with open(done_path, "w") as f:
                f.write("\n".join(results))
            cmd = [sys.executable, os.path.abspath(__file__), "--child", module]
            cmd += ["--json", out, "--done", done_path]
            cmd += ["--per-test-timeout", str(per_test_timeout)]
            for s in skips:
                cmd += ["--skip", s]
            left = max(1.0, timeout - (time.monotonic() - t0))
            returncode, stdout, stderr = run_child_process(cmd, env, left)
            if verbose:
                sys.stderr.write(stderr)
            ended = False
            if os.path.exists(out):
                with open(out) as f:
                    for line in f:
                        try:
                            entry = json.loads(line)
                        except ValueError:
                            continue  # a line cut by the crash
                        if entry.get("end"):
                            ended = True
                        else:
                            results[entry.pop("id")] = entry
                os.unlink(out)
            if ended:
                break
            started = [ln[6:] for ln in stdout.splitlines() if ln.startswith("START ")]
            crashed = next((t for t in reversed(started) if t not in results), None)
            why = f"child exited {returncode}\n{stderr[-3000:]}"
            if crashed is None:
                return None, time.monotonic() - t0, why
            results[crashed] = {"outcome": "crash", "detail": why, "on_libuv": None}
            if time.monotonic() - t0 >= timeout:
                return results, time.monotonic() - t0, f"module timeout {timeout}s"
    return results, time.monotonic() - t0, None


def classify(results, exclusions):
    """Return (unexpected failures, unexpected passes, expected failures)."""
    bad, upass, xfail = [], [], []
    for tid, r in sorted(results.items()):
        excl = next((e for e in exclusions if fnmatch.fnmatchcase(tid, e.pattern)), None)
        if excl is not None:
            excl.used = True
        outcome = r["outcome"]
        if outcome in ("fail", "error", "crash"):
            if excl is not None and excl.kind == "fail":
                xfail.append(tid)
            else:
                bad.append((tid, f"[{outcome}] " + r.get("detail", "")))
        elif outcome == "pass" and excl is not None and excl.kind == "fail":
            upass.append((tid, excl.reason))
    return bad, upass, xfail


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--modules", help="comma-separated test_asyncio modules")
    ap.add_argument("--exclusions", default=EXCLUSIONS)
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--timeout", type=float, default=900.0, help="per module, seconds")
    ap.add_argument("--per-test-timeout", type=float, default=PER_TEST_TIMEOUT)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--debug", action="store_true", help="with PYTHONASYNCIODEBUG=1")
    ap.add_argument(
        "--track-private",
        action="store_true",
        help="list the tests whose own code touches the loop's private attributes",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--skip", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--done", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        run_child(args.child, args.skip, args.done, args.json, args.per_test_timeout)
        return 0

    try:
        import test.test_asyncio  # noqa: F401
    except ImportError as e:
        print(f"asyncio suite: this Python has no test.test_asyncio ({e})")
        return 2

    modules = args.modules.split(",") if args.modules else DEFAULT_MODULES
    exclusions = load_exclusions(args.exclusions)
    everything = {}
    problems = []
    t_all = time.monotonic()
    print(f"asyncio suite on cdaphne's loop, Python {sys.version.split()[0]}")
    for module in modules:
        if importlib.util.find_spec("test.test_asyncio." + module) is None:
            print(f"  {module:26} not in this Python")
            continue
        results, elapsed, crash = run_module(
            module,
            exclusions,
            args.timeout,
            args.per_test_timeout,
            args.verbose,
            args.debug,
            args.track_private,
        )
        if results is None:
            problems.append(f"{module}: CRASHED before its first test: {crash}")
            print(f"  {module:26} CRASH after {elapsed:.0f}s")
            continue
        if crash is not None:
            problems.append(f"{module}: {crash}")
        everything.update(results)
        bad, upass, xfail = classify(results, exclusions)
        counts = {}
        for r in results.values():
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        on_libuv = sum(1 for r in results.values() if r.get("on_libuv"))
        print(
            f"  {module:26} {elapsed:6.1f}s  pass {counts.get('pass', 0):4}"
            f"  on libuv {on_libuv:4}  skip {counts.get('skip', 0):3}"
            f"  excluded {counts.get('excluded', 0) + len(xfail):3}"
            f"  UNEXPECTED fail {len(bad)} pass {len(upass)}"
            + (f"  (crashed {counts['crash']})" if counts.get("crash") else "")
        )
        for tid, detail in bad:
            problems.append(f"{tid}: unexpected failure\n{detail}")
        for tid, reason in upass:
            problems.append(f"{tid}: passes but is excluded as failing ({reason})")
    for e in exclusions:
        if not e.used and any(e.pattern.startswith(m + ".") for m in modules):
            print(f"  note: exclusion matched no test: {e.pattern}")
    if args.track_private:
        names = collections.Counter(n for r in everything.values() for n in r.get("private", ()))
        tests = [t for t, r in everything.items() if r.get("private")]
        print(f"  {len(tests)} tests touch private loop attributes: {names.most_common(25)}")
    total = sum(1 for r in everything.values() if r["outcome"] == "pass")
    on_libuv = sum(1 for r in everything.values() if r.get("on_libuv"))
    print(
        f"asyncio suite: {total} passed ({on_libuv} tests ran on LibuvEventLoop),"
        f" {len(problems)} problems, {time.monotonic() - t_all:.0f}s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f, indent=1, sort_keys=True)
    for p in problems:
        print("----", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
