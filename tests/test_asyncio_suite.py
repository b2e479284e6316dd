"""CPython's asyncio test suite (test.test_asyncio) on cdaphne's loop.

One test per stdlib module; each runs tests/asyncio_suite/run.py in a
child process (which runs the module in its own child under a timeout)
against tests/asyncio_suite/exclusions.txt.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from .asyncio_suite.run import DEFAULT_MODULES

RUN = os.path.join(os.path.dirname(__file__), "asyncio_suite", "run.py")
HAVE_SUITE = importlib.util.find_spec("test.test_asyncio") is not None


def run_suite(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, RUN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.skipif(not HAVE_SUITE, reason="this Python ships no test.test_asyncio")
@pytest.mark.timeout(1300)
@pytest.mark.parametrize("module", DEFAULT_MODULES)
def test_cpython_asyncio_module_on_libuv_loop(module):
    if importlib.util.find_spec("test.test_asyncio." + module) is None:
        pytest.skip(f"{module} is not in Python {sys.version.split()[0]}")
    proc = run_suite("-m", module, "--timeout", "1200")
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]
    assert "CRASH" not in proc.stdout
    assert "not in this Python" not in proc.stdout


# asyncio's debug mode (slow-callback warnings, resource checks, handle
# tracebacks) on the modules that drive the loop hardest.
DEBUG_MODULES = ["test_events", "test_base_events", "test_streams", "test_sock_lowlevel"]


@pytest.mark.skipif(not HAVE_SUITE, reason="this Python ships no test.test_asyncio")
@pytest.mark.timeout(1300)
@pytest.mark.parametrize("module", DEBUG_MODULES)
def test_cpython_asyncio_module_on_libuv_loop_in_debug_mode(module):
    proc = run_suite("-m", module, "--debug", "--timeout", "1200")
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]


@pytest.mark.skipif(not HAVE_SUITE, reason="this Python ships no test.test_asyncio")
def test_excluded_test_that_passes_fails_the_run(tmp_path):
    # Strictness of the exclusion list: an excluded test that passes is
    # reported, and a failing one is counted as expected.
    excl = tmp_path / "exclusions.txt"
    excl.write_text(
        "test_threads.ToThreadTests.test_to_thread fail listed to check strictness\n"
        "test_threads.ToThreadTests.test_to_thread_once skip listed to check skipping\n"
    )
    proc = run_suite("-m", "test_threads", "--exclusions", str(excl), timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "test_threads.ToThreadTests.test_to_thread: passes but is excluded" in proc.stdout
    assert "excluded   1" in proc.stdout  # the skipped one was not run
