"""The wheel PyPI gets, for the running Python: built and repaired by
scripts/dist.sh (or taken from dist/ when newer than every source), installed
into a fresh virtualenv outside the repository, checked with ldd, then run
with the system's libuv, wslay and libcrypto hidden from the loader (an empty
file bind-mounted over each, in a private mount namespace) while real clients
send it an HTTP request and a WebSocket message."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websocket

import cdaphne

from .serverproc import ROOT, ServerProcess

# The sonames the extension needs that no manylinux policy allows to assume.
BUNDLED = ("libuv", "libwslay", "libcrypto")
SYSTEM_SONAMES = ("libuv.so.1", "libwslay.so.1", "libcrypto.so.3")
TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"
# A cold wheel build on a loaded machine can outlast the default 120 s.
pytestmark = pytest.mark.timeout(300)

APP = '''
import json


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "http":
        import cdaphne
        import cdaphne._cdaphne

        with open("/proc/self/maps") as f:
            maps = sorted({line.split()[-1] for line in f
                           if any(n in line for n in ("libuv", "libwslay", "libcrypto"))})
        body = json.dumps({"cdaphne": cdaphne.__file__,
                           "extension": cdaphne._cdaphne.__file__,
                           "maps": maps}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
    if scope["type"] == "websocket":
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "echo: " + message["text"]})
        assert (await receive())["type"] == "websocket.disconnect"
'''


def newest_source() -> float:
    files = [ROOT / "setup.py", ROOT / "pyproject.toml", ROOT / "MANIFEST.in",
             ROOT / "scripts" / "dist.sh", *(ROOT / "csrc").iterdir(),
             *(ROOT / "python" / "cdaphne").rglob("*.py*")]
    return max(f.stat().st_mtime for f in files if f.is_file())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    name = f"cdaphne-{cdaphne.__version__}-{TAG}-{TAG}-manylinux_*_x86_64.whl"
    built = sorted((ROOT / "dist").glob(name), key=lambda p: p.stat().st_mtime)
    if built and built[-1].stat().st_mtime > newest_source():
        return built[-1]  # make dist's, still current
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([str(ROOT / "scripts" / "dist.sh"), "--wheel", sys.executable, str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The repair earned a manylinux tag: no plain linux_x86_64 wheel.
    assert "is consistent with" in proc.stdout, proc.stdout
    (whl,) = out.glob(name)
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv holding only the wheel and its dependencies."""
    path = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   timeout=60)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(path / "bin" / "python"), "install",
         "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=180, cwd=path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return path


def site_packages(venv: Path) -> Path:
    (sp,) = venv.glob("lib/python3*/site-packages")
    return sp.resolve()


def hidden_libraries() -> list[str]:
    """The system's files for the bundled sonames, as the loader finds them."""
    cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True,
                           check=True).stdout
    paths = set()
    for line in cache.splitlines():
        m = re.match(r"\s*(\S+) \(.*\) => (\S+)", line)
        if m and m.group(1) in SYSTEM_SONAMES:
            paths.add(os.path.realpath(m.group(2)))
    return sorted(paths)


def masked(argv: list[str], mounts: list[tuple[Path, str]]) -> list[str]:
    """argv run in a private mount namespace where each (source, target) of
    `mounts` is bind-mounted: an empty file over a library makes the loader
    fail on it with "file too short"; an empty directory hides a directory."""
    script = 'n=$1; shift; for i in $(seq "$n"); do mount --bind "$1" "$2"; shift 2; done; ' \
             'exec "$@"'
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-m", "-r"]
    flat = [str(x) for pair in mounts for x in pair]
    return [*unshare, "sh", "-c", script, "sh", str(len(mounts)), *flat, *argv]


def hidden(argv: list[str], empty: Path) -> list[str]:
    """argv with the system copies of the bundled libraries hidden."""
    return masked(argv, [(empty, lib) for lib in hidden_libraries()])


def test_extension_resolves_bundled_libraries(venv):
    sp = site_packages(venv)
    (ext,) = (sp / "cdaphne").glob("_cdaphne.*.so")
    out = subprocess.run(["ldd", str(ext)], capture_output=True, text=True, check=True).stdout
    resolved = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", line)
        if m:
            resolved[m.group(1)] = m.group(2)
    for lib in BUNDLED:
        (soname,) = [s for s in resolved if s.startswith(lib + "-")]
        assert Path(resolved[soname]).resolve().parent == sp / "cdaphne.libs", out
    assert not any(s in resolved for s in SYSTEM_SONAMES), out


def test_wheel_serves_with_system_libraries_hidden(venv, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert hidden_libraries(), "ldconfig knows no system libuv/wslay/libcrypto to hide"
    py = str(venv / "bin" / "python")

    # The control: in that namespace the system copies cannot be loaded.
    probe = (f"import ctypes\nfor n in {SYSTEM_SONAMES!r}:\n"
             "    try: ctypes.CDLL(n)\n"
             "    except OSError as e: print(e)\n"
             "    else: print('loaded', n)")
    out = subprocess.run(hidden([py, "-c", probe], empty), capture_output=True, text=True,
                         timeout=30, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("file too short") == 3, out.stdout

    version = subprocess.run(hidden([str(venv / "bin" / "cdaphne"), "--version"], empty),
                             capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.splitlines()[0] == f"cdaphne {cdaphne.__version__}"
    assert re.search(r"^libuv \d+\.\d+\.\d+$", version.stdout, re.M), version.stdout

    (tmp_path / "wheelapp.py").write_text(APP)
    server = ServerProcess(["-p", "0", "wheelapp:app"], cwd=tmp_path,
                           cmd=hidden([str(venv / "bin" / "cdaphne")], empty))
    try:
        server.wait_listening()
        r = httpx.get(server.url("/"), timeout=10)
        assert r.status_code == 200
        info = r.json()
        sp = site_packages(venv)
        # The venv's cdaphne, not the repository's python/ tree.
        assert Path(info["cdaphne"]).parent == sp / "cdaphne"
        assert Path(info["extension"]).parent == sp / "cdaphne"
        for lib in BUNDLED:
            mapped = [m for m in info["maps"] if Path(m).name.startswith(lib)]
            assert mapped, info["maps"]
            assert all(Path(m).parent == sp / "cdaphne.libs" for m in mapped), info["maps"]

        ws = websocket.create_connection(server.ws_url("/ws"), timeout=10)
        ws.send("hello")
        assert ws.recv() == "echo: hello"
        ws.close()
    finally:
        rc = server.stop()
    assert rc == 0, server.log_tail()


@pytest.mark.parametrize(("hide", "package"), [
    ("/usr/share/llhttp", "node-llhttp"),
    ("/usr/include/wslay", "libwslay-dev"),
    ("libuv.pc", "libuv1-dev"),
    ("libcrypto.pc", "libssl-dev"),
    ("zlib.pc", "zlib1g-dev"),
])
def test_sdist_build_names_the_missing_package(hide, package, tmp_path):
    if not hide.startswith("/"):
        pc = subprocess.run(["pkg-config", "--variable=pcfiledir", hide.removesuffix(".pc")],
                            capture_output=True, text=True, check=True).stdout.strip()
        hide = f"{pc}/{hide}"
    empty = tmp_path / "empty"
    if os.path.isdir(hide):
        empty.mkdir()
    else:
        empty.write_bytes(b"")
    # setup.py checks before building anything, whatever the command.
    proc = subprocess.run(masked([sys.executable, "setup.py", "--version"], [(empty, hide)]),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].endswith(f"apt-get install {package}"), \
        proc.stderr
