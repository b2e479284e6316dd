"""Django's tests/runtests.py with cdaphne's loop as every event loop
(async tests, AsyncClient, async_to_sync): run from Django's tests/."""

from __future__ import annotations

import runpy
import sys

import cdaphne_policy  # noqa: F401  (installs the policy)

sys.path.insert(0, ".")  # runtests.py's settings modules (test_sqlite)
sys.argv = ["runtests.py", *sys.argv[1:]]
runpy.run_path("runtests.py", run_name="__main__")
