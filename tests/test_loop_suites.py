"""asgiref's own test suite and Django's async test modules pass with
cdaphne's loop as every event loop they make (tests/loop_suites/run.py:
pinned sdists from PyPI, fetched on first use into the cache directory)."""

from __future__ import annotations

from .loop_suites import run as suites


def _failed(result: suites.Result) -> str:
    failed = sorted(t for t, outcome in result.outcomes.items() if outcome == "failed")
    return f"{failed}\n{result.output[-8000:]}" if failed else ""


def test_asgirefs_own_suite_passes_on_cdaphnes_loop() -> None:
    r = suites.run_asgiref()
    assert r.ran >= 100, f"asgiref's suite did not run:\n{r.output[-4000:]}"
    assert not _failed(r), f"asgiref's tests failing on cdaphne's loop: {_failed(r)}"
    assert r.status == 0, r.output[-4000:]
    # Its async tests and every async_to_sync made a loop: ours.
    assert r.loops >= 50, f"only {r.loops} cdaphne loops made: the suite ran on another loop"


def test_djangos_async_test_modules_pass_on_cdaphnes_loop() -> None:
    r = suites.run_django()
    assert r.ran >= 400, f"Django's tests did not run:\n{r.output[-4000:]}"
    assert not _failed(r), f"Django's tests failing on cdaphne's loop: {_failed(r)}"
    assert r.status == 0, r.output[-4000:]
    assert r.loops >= 100, f"only {r.loops} cdaphne loops made: the suite ran on another loop"
