"""Paths, the peer venv, the ceiling binary, and what machine and versions a run used."""

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
APPS = BENCH / "apps"
WORK = BENCH / ".work"
RESULTS = BENCH / "results"
PEER_VENV = WORK / "venv"
CEILING_SRC = BENCH / "ceiling.c"
CEILING_BIN = WORK / "ceiling"
WS_CLIENT_SRC = BENCH / "ws_echo_client.c"
WS_CLIENT_BIN = WORK / "ws_echo_client"
WS_CEILING_SRC = BENCH / "ws_ceiling.c"
WS_CEILING_BIN = WORK / "ws_ceiling"
TLS_DIR = WORK / "tls"  # the hello-tls scenario's self-signed certificate

# Installed into bench/.work/venv, never into the project's .venv.
PEER_PACKAGES = [
    "uvicorn[standard]",
    "granian",
    "hypercorn",
    "daphne",
    "fastpysgi",
    "picows",
    "django",
    "channels",
    "channels-redis",
    "psutil",
    "matplotlib",
]
PEER_DISTRIBUTIONS = [
    "uvicorn",
    "uvloop",
    "httptools",
    "websockets",
    "granian",
    "hypercorn",
    "daphne",
    "twisted",
    "fastpysgi",
    "picows",
    "django",
    "channels",
    "channels-redis",
    "redis",
    "matplotlib",
]

Log = Callable[[str], None]


class SetupError(RuntimeError):
    """The runner could not prepare a tool it needs."""


def project_python() -> Path:
    """The project's venv interpreter, which runs cdaphne (else the current one)."""
    candidate = ROOT / ".venv" / "bin" / "python"
    return candidate if candidate.exists() else Path(sys.executable)


def peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def base_python() -> str:
    """The interpreter the project's venv was made from, so both venvs match."""
    out = subprocess.run(
        [str(project_python()), "-c", "import sys; print(sys._base_executable)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


def ensure_peer_venv(log: Log) -> Path:
    """Create bench/.work/venv and install the peers (once; re-run if the list changes)."""
    python = peer_python()
    stamp = PEER_VENV / ".bench-installed"
    wanted = hashlib.sha256(" ".join(PEER_PACKAGES).encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    if not python.exists():
        base = base_python()
        log(f"creating {PEER_VENV} with {base}")
        subprocess.run([base, "-m", "venv", str(PEER_VENV)], check=True, timeout=300)
    log("installing the peer servers into bench/.work/venv (first run only, about a minute)")
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_PACKAGES],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0:
        raise SetupError(f"pip install into {PEER_VENV} failed:\n{proc.stderr[-2000:]}")
    stamp.write_text(wanted + "\n")
    return python


def _compile(log: Log, src: Path, out: Path, what: str, libs: list[str]) -> Path:
    """Compile one C file of the bench into bench/.work when the source is newer."""
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    WORK.mkdir(parents=True, exist_ok=True)
    flags: list[str] = []
    for lib in libs:
        try:
            flags += subprocess.run(
                ["pkg-config", "--cflags", "--libs", lib],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.split()
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SetupError(
                f"pkg-config {lib} failed ({exc}): apt-get install {lib}1-dev"
            ) from exc
    cmd = ["cc", "-O2", "-Wall", "-o", str(out), str(src), *flags]
    log("compiling " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise SetupError(f"compiling the {what} failed: {exc}") from exc
    if proc.returncode != 0:
        raise SetupError(f"compiling the {what} failed:\n{proc.stderr}")
    return out


def build_ceiling(log: Log) -> Path:
    """Compile bench/ceiling.c into bench/.work/ceiling when the source is newer."""
    return _compile(log, CEILING_SRC, CEILING_BIN, "ceiling", ["libuv"])


def build_ws_client(log: Log) -> Path:
    """Compile bench/ws_echo_client.c (epoll, no library) into bench/.work."""
    return _compile(log, WS_CLIENT_SRC, WS_CLIENT_BIN, "C WebSocket echo client", [])


def build_ws_ceiling(log: Log) -> Path:
    """Compile bench/ws_ceiling.c (a bare libuv WebSocket echo) into bench/.work."""
    return _compile(log, WS_CEILING_SRC, WS_CEILING_BIN, "WebSocket ceiling", ["libuv"])


def tls_cert() -> tuple[Path, Path]:
    """(certificate, key) for the hello-tls servers: a self-signed P-256
    certificate for 127.0.0.1, made once with the openssl command (its key in
    PKCS#8, which Granian requires)."""
    cert, key = TLS_DIR / "cert.pem", TLS_DIR / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    TLS_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1",
    ]  # fmt: skip
    try:
        subprocess.run(cmd, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SetupError(f"openssl could not make the TLS certificate: {exc}") from exc
    return cert, key


def _first_line(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def machine_info() -> dict[str, object]:
    """nproc, CPU model, kernel, memory and load: the context of every number."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.platform(),
        "uname": " ".join(platform.uname()),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "loadavg_at_start": list(os.getloadavg()),
        "wrk": _first_line(["wrk", "-v"]),
        "libuv": _first_line(["pkg-config", "--modversion", "libuv"]),
        "cc": _first_line(["cc", "--version"]),
    }


_VERSIONS_SNIPPET = """
import importlib.metadata as m, json, sys
out = {"python": sys.version.split()[0]}
for name in sys.argv[1:]:
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        out[name] = None
print(json.dumps(out))
"""


def distribution_versions(python: Path, names: list[str]) -> dict[str, str | None]:
    """Versions of these distributions as installed for that interpreter."""
    proc = subprocess.run(
        [str(python), "-c", _VERSIONS_SNIPPET, *names],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    result: dict[str, str | None] = json.loads(proc.stdout)
    return result


def git_revision() -> str:
    return _first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])


def which(tool: str) -> str | None:
    return shutil.which(tool)
