"""Daphne's own wire-level tests, run against cdaphne.

The tests come from the daphne sdist on PyPI, a pinned version checked by
its sha256, fetched with pip at test time into a cache directory (never copied into
this repository). They run in a pytest subprocess with
``cdaphne_daphne_plugin`` loaded, which swaps ``daphne.testing.DaphneProcess``
for a thin subclass of ``cdaphne.testing.CdaphneProcess``; the plugin's
docstring lists the few adaptations it makes (a Host header, scope keys the
spec allows) and why.

    python tests/daphne_suite/run.py [pytest args...]

prints pytest's output and exits with its status. ``tests/test_daphne_suite.py``
runs it and compares the outcome with ``expected_failures.txt``.

Environment: ``CDAPHNE_CACHE_DIR`` (default ``~/.cache/cdaphne``);
``CDAPHNE_DAPHNE_SDIST``: a path to the sdist tarball to use instead of
downloading it (it must still have the pinned hash).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

VERSION = "4.2.3"
SHA256 = "1c458f81926b37301cadc8ec1b6316d9a5db53fba061fc4826610395fe5d5c81"
TEST_FILES = ("tests/test_http_request.py", "tests/test_http_response.py",
              "tests/test_websocket.py")
HERE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    base = os.environ.get("CDAPHNE_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "cdaphne")
    return Path(base)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(package: str = "daphne", version: str = VERSION, sha256: str = SHA256) -> Path:
    """The extracted sdist of package==version (downloaded and checked on
    first use; tests/loop_suites fetches asgiref's and Django's too)."""
    root = cache_dir()
    name = f"{package}-{version}"
    tree = root / name
    if (tree / ".checked").exists():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    given = os.environ.get("CDAPHNE_DAPHNE_SDIST") if package == "daphne" else None
    tarball = Path(given or root / f"{name}.tar.gz")
    if not tarball.exists():
        # pip, the ordinary client for the package index, fetches the sdist.
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", "--dest", str(root), f"{package}=={version}"],
            check=True, timeout=300)
    digest = _sha256(tarball)
    if digest != sha256:
        raise RuntimeError(f"{tarball}: sha256 {digest}, expected {sha256}")
    staging = Path(tempfile.mkdtemp(dir=root))
    try:
        with tarfile.open(tarball) as tar:
            tar.extractall(staging, filter="data")
        (staging / name / ".checked").write_text(sha256 + "\n")
        if tree.exists():
            shutil.rmtree(tree)
        (staging / name).replace(tree)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tree


def run(pytest_args: list[str], *, timeout: float = 300) -> tuple[int, str, dict[str, str]]:
    """Run Daphne's tests; returns (status, output, {test id: outcome})."""
    tree = fetch()
    with tempfile.TemporaryDirectory(prefix="cdaphne-daphne-") as tmp:
        junit = os.path.join(tmp, "junit.xml")
        env = dict(os.environ)
        # daphne.testing.TestApplication keeps its state in files under
        # tempfile.gettempdir(): a private TMPDIR per run.
        env["TMPDIR"] = tmp
        # Daphne's own package (daphne.testing) from the same sdist.
        env["PYTHONPATH"] = os.pathsep.join([str(tree), str(HERE)])
        env.pop("PYTEST_ADDOPTS", None)
        argv = [sys.executable, "-m", "pytest", "-p", "cdaphne_daphne_plugin",
                "-p", "no:cacheprovider", "-q", "-rfE", "--timeout", "60",
                f"--junitxml={junit}", *TEST_FILES, *pytest_args]
        status, out = run_command(argv, tree, env, timeout)
        return status, out, outcomes(junit)


def run_command(argv: list[str], cwd: Path, env: dict[str, str],
                timeout: float) -> tuple[int, str]:
    """(status, output) of a suite's command, in a session of its own so
    that every process a test leaves behind (Daphne's testing instance
    terminates but never joins) goes with it."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += f"\n*** the suite did not finish within {timeout} s\n".encode()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, out.decode(errors="replace")


def outcomes(junit: str) -> dict[str, str]:
    """{"test_file.py::Class::test": "passed" | "failed" | "skipped"}."""
    if not os.path.exists(junit):
        return {}
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        # classname is "tests.test_http_request.TestHTTPRequest", or
        # "tests.test_sync" for a function, or "" and the name is the
        # module's (a module skipped whole).
        parts = case.get("classname", "").split(".")[1:]
        if parts:
            name = "::".join([f"{parts[0]}.py", *parts[1:], case.get("name", "")])
        else:
            name = case.get("name", "").split(".")[-1] + ".py"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                break
            if child.tag == "skipped":
                outcome = "skipped"
        outcomes[name] = outcome
    return outcomes


def expected_failures() -> dict[str, tuple[str, str]]:
    """expected_failures.txt: {test id: (strict|race, reason)}."""
    result = {}
    for line in (HERE / "expected_failures.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test, kind, reason = line.split(" ", 2)
        assert kind in ("strict", "race"), line
        result[test] = (kind, reason)
    return result


def main() -> int:
    status, out, _ = run(sys.argv[1:])
    sys.stdout.write(out)
    return status


if __name__ == "__main__":
    sys.exit(main())
