#!/usr/bin/env bash
# Installs the Debian packages the developer targets need on top of
# scripts/bootstrap.sh's: `make lint` (clang-format-16), `make fuzz` and
# `make fuzz-smoke` (clang-14 with its sanitizer and libFuzzer runtimes).
# `make test-asan` needs nothing more (it builds with gcc's libasan).
# `make run` and `make test` never call this. Idempotent.
#   scripts/devtools.sh [lint|fuzz|all]    (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-all}" in
    lint) APT_PACKAGES="clang-format-16" ;;
    fuzz) APT_PACKAGES="clang-14 libclang-rt-14-dev libfuzzer-14-dev" ;;
    all) APT_PACKAGES="clang-format-16 clang-14 libclang-rt-14-dev libfuzzer-14-dev" ;;
    *) echo "usage: $0 [lint|fuzz|all]" >&2; exit 2 ;;
esac

. scripts/apt-missing.sh
# shellcheck disable=SC2086 # the list is split on purpose
apt_install_missing devtools $APT_PACKAGES
