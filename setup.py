"""Build the C extension. Metadata lives in pyproject.toml."""

import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup

LLHTTP_SRC = "/usr/share/llhttp"
LLHTTP_INC = "/usr/share/include/llhttp"
WSLAY_INC = "/usr/include/wslay"


def fail(what: str, package: str) -> None:
    sys.exit(f"cdaphne: {what} not found; install it with: apt-get install {package}")


def pkg_config(name: str, package: str) -> tuple[list[str], list[str], list[str]]:
    if shutil.which("pkg-config") is None:
        fail("pkg-config", "pkg-config")
    try:
        cflags = subprocess.check_output(["pkg-config", "--cflags", name], text=True).split()
        libs = subprocess.check_output(["pkg-config", "--libs", name], text=True).split()
    except subprocess.CalledProcessError:
        fail(name, package)
    incs = [f[2:] for f in cflags if f.startswith("-I")]
    libdirs = [f[2:] for f in libs if f.startswith("-L")]
    names = [f[2:] for f in libs if f.startswith("-l")]
    return incs, libdirs, names


def wslay_version() -> list[tuple[str, str]]:
    """wslay 1.1.1's wslayver.h says 1.0.1-DEV and it ships no .pc file: ask
    dpkg for libwslay-dev's upstream version (module.c falls back to the
    header's when this is not Debian)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${source:Upstream-Version}", "libwslay-dev"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return []
    if not out or not all(c.isalnum() or c in ".~+-" for c in out):
        return []
    return [("CD_WSLAY_VERSION", f'"{out}"')]


def extensions() -> list[Extension]:
    if not os.path.exists(os.path.join(LLHTTP_SRC, "llhttp.c")):
        fail("llhttp C sources", "node-llhttp")
    if not os.path.exists(os.path.join(WSLAY_INC, "wslay.h")):
        fail("wslay", "libwslay-dev")
    uv_inc, uv_dirs, uv_libs = pkg_config("libuv", "libuv1-dev")
    ssl_inc, ssl_dirs, ssl_libs = pkg_config("openssl", "libssl-dev")  # libssl + libcrypto
    z_inc, z_dirs, z_libs = pkg_config("zlib", "zlib1g-dev")
    debug = os.environ.get("CDAPHNE_DEBUG") == "1"
    cflags = [
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Wshadow",
        "-Wcast-qual",
        "-Wswitch-enum",
        "-Wmissing-prototypes",
        "-Wstrict-prototypes",
        "-Wno-unused-parameter",
        "-fvisibility=hidden",
    ]
    # Development and CI builds (scripts/bootstrap.sh) turn warnings into
    # errors; a user's pip install on another compiler must still build.
    if os.environ.get("CDAPHNE_WERROR") == "1":
        cflags.append("-Werror")
    if debug:
        cflags += ["-O0", "-g", "-UNDEBUG"]
    else:
        cflags += ["-O2"]
    # CDAPHNE_ASAN=1 (scripts/test-asan.sh): ASan+UBSan, UB aborts; run
    # with libasan preloaded and PYTHONMALLOC=malloc.
    sanitize = [
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=undefined",
        "-fno-omit-frame-pointer",
    ]
    asan = os.environ.get("CDAPHNE_ASAN") == "1"
    if asan:
        cflags += [*sanitize, "-O1", "-g"]
    core_sources = sorted(
        os.path.join("csrc", f)
        for f in os.listdir("csrc")
        if f.endswith(".c") and not f.startswith("layer")
    )
    core = Extension(
        "cdaphne._cdaphne",
        sources=core_sources,
        # csrc/llhttp_*.c include <llhttp/*.c> from /usr/share.
        include_dirs=["csrc", LLHTTP_INC, os.path.dirname(LLHTTP_SRC), *uv_inc, *ssl_inc,
                      *z_inc],
        library_dirs=[*uv_dirs, *ssl_dirs, *z_dirs],
        libraries=[*uv_libs, "wslay", *ssl_libs, *z_libs],
        define_macros=wslay_version(),
        extra_compile_args=cflags,
        extra_link_args=sanitize if asan else [],
    )
    exts = [core]
    if os.path.exists("csrc/layer.c"):
        exts.append(
            Extension(
                "cdaphne._layer",
                sources=["csrc/layer.c"],
                include_dirs=["csrc"],
                extra_compile_args=cflags,
                extra_link_args=sanitize if asan else [],
            )
        )
    return exts


setup(ext_modules=extensions())
