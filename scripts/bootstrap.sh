#!/usr/bin/env bash
# Installs whatever is missing for building, running and testing cdaphne:
# Debian packages, a virtualenv on the newest CPython >= 3.12 found (else
# python3), and the package itself in editable mode with its test extras.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="build-essential pkg-config libuv1-dev libwslay-dev node-llhttp libssl-dev zlib1g-dev
openssl redis-server wrk chromium chromium-driver"
VENV=${VENV:-.venv}

. scripts/apt-missing.sh
# shellcheck disable=SC2086 # the list is split on purpose
apt_install_missing bootstrap $APT_PACKAGES

pick_python() {
    local best="" v
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"  # Asked for by name (CI's 3.11 run).
        return
    fi
    for cand in "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 \
        python3.14 python3.13 python3.12; do
        [ -n "$cand" ] || continue
        command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ] || continue
        v=$("$cand" -c 'import sys; print(sys.version_info >= (3, 12))' 2>/dev/null) || continue
        [ "$v" = True ] || continue
        if [ -z "$best" ] || [ "$("$cand" -c 'import sys; print(sys.version_info[:2])')" \> \
            "$("$best" -c 'import sys; print(sys.version_info[:2])')" ]; then
            best=$cand
        fi
    done
    echo "${best:-python3}"
}

if [ ! -x "$VENV/bin/python" ]; then
    py=$(pick_python)
    echo "bootstrap: creating $VENV with $py ($("$py" --version))"
    "$py" -m venv "$VENV"
fi

# Runs a command quietly; on failure shows its output and stops.
quiet() {
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        grep -v "is ignored: it is neither" "$log" >&2
        rm -f "$log"
        echo "bootstrap: failed: $*" >&2
        exit 1
    fi
    rm -f "$log"
}

stamp="$VENV/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
    echo "bootstrap: pip install -e .[test] into $VENV"
    quiet "$VENV/bin/python" -m pip install --upgrade pip setuptools wheel
    quiet "$VENV/bin/python" -m pip install -e ".[test]"
    touch "$stamp"
fi
# The C sources change more often than the metadata: rebuild in place.
CDAPHNE_WERROR=1 quiet "$VENV/bin/python" setup.py build_ext --inplace
