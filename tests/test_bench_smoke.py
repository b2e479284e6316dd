"""Smoke test of the benchmark runner: one short hello-world run against the C ceiling server.

No timing assertions: only that the runner produced a positive number with zero
errors and a report. It needs wrk, cc and libuv (scripts/bootstrap.sh installs
them) but not the peer venv, so it stays fast.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)


def test_quick_hello_against_ceiling_reports_positive_rps_without_errors(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "bench", "--quick", "--only", "hello", "--servers", "ceiling",
        "--reps", "1", "--duration", "1", "--out", str(tmp_path), "--name", "smoke", "--no-plots",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]

    doc = json.loads((tmp_path / "smoke.json").read_text())
    result = doc["scenarios"]["hello"]["servers"]["ceiling"]
    assert result["status"] == "ok", result["reason"]
    assert result["median"] > 0
    assert result["errors"] == {}
    assert all(sum(run["errors"].values()) == 0 for run in result["runs"])
    assert doc["machine"]["nproc"] >= 1
    assert "ceiling" in (tmp_path / "latest.md").read_text()


def test_unknown_scenario_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "unknown scenario" in proc.stderr


@pytest.mark.parametrize("loop", ["asyncio", "cdaphne"])
def test_aio_micro_benchmarks_run_and_check_themselves_on_each_loop(loop: str) -> None:
    from bench.aio_micro import BENCHES

    for bench in BENCHES:
        cmd = [sys.executable, "bench/aio_micro.py", "--loop", loop, "--bench", bench,
               "--duration", "0.1"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (bench, proc.stderr[-2000:])
        r = json.loads(proc.stdout)
        assert r["bench"] == bench and r["loop"] == loop
        assert r["ops"] > 0 and r["ops_per_s"] > 0, r
        assert r["prefix"] == sys.prefix, r  # the interpreter it ran on


def test_callgrind_reader_splits_self_and_inclusive_costs(tmp_path: Path) -> None:
    # The format callgrind writes: compressed names, a call's cost on the line
    # after calls=, positions relative (+n) or repeated (*).
    from bench.callgrind_fanout import _parse, _total

    dump = tmp_path / "cg.out"
    dump.write_text(
        "version: 1\ncreator: callgrind-3.19.0\npart: 1\ndesc: Trigger: dump\n"
        "positions: line\nevents: Ir\n\n"
        "ob=(1) /lib/libpython3.so\nfl=(1) ceval.c\nfn=(1) eval\n10 100\n+1 50\n"
        "cfn=(2) helper\ncalls=3 20\n* 400\n\n"
        "fn=(2)\n20 380\n"
        "ob=(2) /x/_cdaphne.so\nfl=(2) hop.c\nfn=(3) cd_hop_drain\n5 7\n"
        "cob=(1)\ncfi=(1)\ncfn=(1)\ncalls=1 10\n+2 1000\n\ntotals: 1537\n"
    )
    edges: dict[str, dict[str, int]] = {}
    self_ir, incl = _parse(dump, edges)
    assert self_ir[("eval", "libpython3.so")] == 150
    assert incl[("eval", "libpython3.so")] == 550
    assert self_ir[("helper", "libpython3.so")] == 380
    assert self_ir[("cd_hop_drain", "_cdaphne.so")] == 7
    assert incl[("cd_hop_drain", "_cdaphne.so")] == 1007
    assert edges == {"eval": {"helper": 400}, "cd_hop_drain": {"eval": 1000}}
    assert _total(dump) == 1537
    exit_dump = tmp_path / "cg.exit"
    exit_dump.write_text("desc: Trigger: Program termination\ntotals: 99\n")
    assert _total(exit_dump) == 0


@pytest.mark.parametrize("loop", ["asyncio", "cdaphne"])
def test_chat_alone_delivers_every_broadcast_to_every_member(loop: str) -> None:
    """bench/chat_alone.py (server_gap --app fanout's app-alone rows): the Channels
    room with no server; it checks each member's message itself and exits non-zero
    on a wrong one."""
    cmd = [sys.executable, "bench/chat_alone.py", "--loop", loop, "--duration", "0.2",
           "--members", "7"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["loop"] == loop
    assert r["deliveries"] > 0 and r["deliveries"] % 7 == 0, r


HANDOVERS_SCRIPT = """\
python 100/100 9.999900: syscalls:sys_enter_clone3: uargs: 0x7ffc
python 100/100 9.999950: syscalls:sys_enter_clone3: uargs: 0x7ffc
python 100/100 10.000000: syscalls:sys_enter_clone3: uargs: 0x7ffc
python 100/100 10.000100: syscalls:sys_enter_futex: uaddr: 0x7f, op: 0x00000081, val: 0x1
\t           87ebf sem_post@GLIBC_2.2.5 (/usr/lib/libc.so.6)
\t          265b5f _queue_SimpleQueue_put (/usr/lib/libpython3.13.so)
\t          2880f7 cd_hop_submit (/x/_cdaphne.so)
\t    7fd4fecf8fe5 py::SyncToAsync.__call__:/x/sync.py (/tmp/perf-100.map)

python 100/100 10.000110: sched:sched_switch: prev_comm=python prev_pid=100 prev_prio=120 \
prev_state=R ==> next_comm=python next_pid=101 next_prio=120
\tffffffff82267448 __schedule ([kernel.kallsyms])
\t          265b5f _queue_SimpleQueue_put (/usr/lib/libpython3.13.so)
\t          2880f7 cd_hop_submit (/x/_cdaphne.so)

python 100/101 10.000120: sched:sched_switch: prev_comm=python prev_pid=101 prev_prio=120 \
prev_state=S ==> next_comm=python next_pid=100 next_prio=120
\t          265fd4 take_gil (/usr/lib/libpython3.13.so)
\t          2aaa64 _queue_SimpleQueue_get (/usr/lib/libpython3.13.so)

python 100/100 10.000200: syscalls:sys_enter_clone3: uargs: 0x7ffc
python 100/100 10.000300: syscalls:sys_enter_clone3: uargs: 0x7ffc
python 100/101 10.000310: sched:sched_switch: prev_comm=python prev_pid=101 prev_prio=120 \
prev_state=S ==> next_comm=other next_pid=7 next_prio=120
\t          2aaa64 _queue_SimpleQueue_get (/usr/lib/libpython3.13.so)
python 100/100 10.000400: syscalls:sys_enter_clone3: uargs: 0x7ffc
"""


def test_handovers_counts_switches_and_futex_per_request_by_thread_and_place() -> None:
    """bench/handovers.py's reader: a request is two clone3 calls of the loop's
    thread; the second half of the requests is counted (here the second of three
    starts, to the last: one request, not the switch after it), each event keyed
    by thread, state and where it was, the futex and GIL plumbing left out."""
    from bench.handovers import counts, parse_text

    evs = parse_text(HANDOVERS_SCRIPT)
    assert len(evs) == 10
    put = ["sem_post@GLIBC_2.2.5", "_queue_SimpleQueue_put", "cd_hop_submit"]
    assert evs[3]["stack"][:3] == put
    n, found = counts(evs)
    assert n == 1
    assert found == {
        ("futex", "L", "WAKE", "_queue_SimpleQueue_put/cd_hop_submit <SyncToAsync.__call__>"): 1,
        ("switch", "L", "R", "_queue_SimpleQueue_put/cd_hop_submit"): 1,
        ("switch", "T", "S", "take_gil/_queue_SimpleQueue_get"): 1,
    }
