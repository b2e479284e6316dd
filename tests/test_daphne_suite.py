"""Daphne's own wire-level tests (daphne 4.2.3 sdist: test_http_request.py,
test_http_response.py, test_websocket.py) pass against cdaphne, except the
ones listed with their reason in tests/daphne_suite/expected_failures.txt.

The sdist is downloaded on first use into the cache directory (pinned
version, sha256-checked); see tests/daphne_suite/run.py.
"""

from __future__ import annotations

from .daphne_suite import run as suite


def test_daphne_own_suite_passes_against_cdaphne() -> None:
    status, out, outcomes = suite.run([], timeout=240)
    assert outcomes, f"Daphne's suite did not run:\n{out[-4000:]}"
    expected = suite.expected_failures()
    unknown = set(expected) - set(outcomes)
    assert not unknown, f"expected_failures.txt names tests that do not exist: {unknown}"
    failed = sorted(t for t, o in outcomes.items() if o != "passed" and t not in expected)
    assert not failed, f"Daphne's tests failing against cdaphne: {failed}\n{out[-8000:]}"
    stale = sorted(t for t, (kind, _) in expected.items()
                   if kind == "strict" and outcomes[t] == "passed")
    assert not stale, f"listed as expected failures but passed (update the list): {stale}"
