"""The own tests of the libraries a Channels app runs on, with cdaphne's
loop as every event loop: asgiref's whole suite (sync_to_async,
async_to_sync, Local, the thread-sensitive executors: what our executor
hops replace) and Django's async modules (async views and middleware,
ASGIHandler, AsyncClient, async signals). The sdists come from PyPI, pinned
and sha256-checked (tests/daphne_suite/run.py fetches them); the tests run
with the sdist's own package first on the path.

Every loop a test makes is counted (cdaphne_policy.py): a run that made
none of ours did not test our loop.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..daphne_suite.run import fetch, outcomes, run_command

HERE = Path(__file__).resolve().parent

ASGIREF = ("asgiref", "3.13.0", "034cc8cbf72d00553b4be256703ac545120b4e50af13b49dec99da899aeeecb4")
# Django 6 runs on Python 3.12 and later; 5.2 (LTS) on 3.11.
DJANGO = (("django", "6.1.3", "b5d2d9e35295065d13b1927b3f19a59bd119f737aa6299def14ccca1ae3c8c0d")
          if sys.version_info >= (3, 12) else
          ("django", "5.2.19", "ad03d8abc51dbff95ebf34b27123cf0c26a3b62db7ba0cd520783686362533d1"))
# Django's test modules with async code (views, middleware, handlers,
# signals, decorators, the test client); about 10 s.
DJANGO_MODULES = ("async", "asgi", "handlers", "signals", "decorators",
                  "middleware_exceptions", "test_client", "deprecation")
# CPython 3.12.0 and 3.12.1 name the wrong line for a warning raised inside a
# multi-line `with (...)`: deprecation.test_warn_about_implementation fails
# there on stock asyncio too (6 of 18, no loop involved), so it is left out.
WRONG_WARNING_LINES = (3, 12) <= sys.version_info[:3] <= (3, 12, 1)
DJANGO_RAN = re.compile(r"^Ran (\d+) tests? in ", re.MULTILINE)
DJANGO_FAILED = re.compile(r"^(?:FAIL|ERROR): (\w+) \(([\w.]+)\)", re.MULTILINE)  # name, its path


@dataclass
class Result:
    status: int
    output: str
    outcomes: dict[str, str]  # test id -> passed | failed | skipped (the failed only for Django)
    loops: int  # cdaphne loops the run made
    foreign: int  # other loops the run made (one is a test not run on ours)
    ran: int  # tests run


def _env(tree: Path, tmp: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(HERE)])
    env["CDAPHNE_LOOPS_FILE"] = os.path.join(tmp, "loops")
    env["TMPDIR"] = tmp
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def _loops(tmp: str) -> tuple[int, int]:
    """(cdaphne loops, other loops) the run made; (0, 0) if it wrote nothing."""
    try:
        ours, foreign = Path(tmp, "loops").read_text().split()
        return int(ours), int(foreign)
    except (OSError, ValueError):
        return 0, 0


def run_asgiref(timeout: float = 300) -> Result:
    tree = fetch(*ASGIREF)
    with tempfile.TemporaryDirectory(prefix="cdaphne-asgiref-") as tmp:
        junit = os.path.join(tmp, "junit.xml")
        argv = [sys.executable, "-m", "pytest", "-p", "cdaphne_loop_plugin",
                "-p", "no:cacheprovider", "-q", "-rfE", "--timeout", "60",
                f"--junitxml={junit}", "tests"]
        status, out = run_command(argv, tree, _env(tree, tmp), timeout)
        found = outcomes(junit)
        return Result(status, out, found, *_loops(tmp), len(found))


def _django_labels(tree: Path) -> list[str]:
    if not WRONG_WARNING_LINES:
        return list(DJANGO_MODULES)
    kept = sorted(f"deprecation.{p.stem}" for p in (tree / "tests" / "deprecation").glob("test*.py")
                  if p.stem != "test_warn_about_implementation")
    return [m for m in DJANGO_MODULES if m != "deprecation"] + kept


def run_django(timeout: float = 600) -> Result:
    tree = fetch(*DJANGO)
    with tempfile.TemporaryDirectory(prefix="cdaphne-django-") as tmp:
        argv = [sys.executable, str(HERE / "django_runtests.py"), "--parallel", "1",
                *_django_labels(tree)]
        status, out = run_command(argv, tree / "tests", _env(tree, tmp), timeout)
        ran = DJANGO_RAN.search(out)
        failed = {m[2]: "failed" for m in DJANGO_FAILED.finditer(out)}
        return Result(status, out, failed, *_loops(tmp), int(ran[1]) if ran else 0)
