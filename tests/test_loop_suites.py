"""asgiref's own test suite and Django's async test modules pass with
cdaphne's loop as every event loop they make (tests/loop_suites/run.py:
pinned sdists from PyPI, fetched on first use into the cache directory)."""

from __future__ import annotations

import pytest

from .loop_suites import run as suites


# (the suite, tests it runs at least, cdaphne loops its async tests and
# every async_to_sync make at least)
@pytest.mark.parametrize(("run", "tests", "loops"), [
    (suites.run_asgiref, 100, 50),
    (suites.run_django, 400, 100),
], ids=["asgiref", "django"])
def test_the_suite_passes_on_cdaphnes_loop(run, tests, loops) -> None:
    r = run()
    assert r.ran >= tests, f"the suite did not run:\n{r.output[-4000:]}"
    failed = sorted(t for t, outcome in r.outcomes.items() if outcome == "failed")
    assert not failed, f"failing on cdaphne's loop: {failed}\n{r.output[-8000:]}"
    assert r.status == 0, r.output[-4000:]
    assert r.loops >= loops, f"only {r.loops} cdaphne loops made: the suite ran on another loop"
    assert r.foreign == 0, f"{r.foreign} loops not cdaphne's made (not through the policy)"
