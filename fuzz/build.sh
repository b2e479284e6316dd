#!/usr/bin/env bash
# Builds the libFuzzer targets into build/fuzz/<target> with clang-14:
# cdaphne's C sources (and llhttp's) instrumented with
# -fsanitize=fuzzer-no-link,address,undefined, linked with fuzz/driver.c
# against the libpython of $PY (the venv's interpreter by default).
#   fuzz/build.sh [target...]   (default: http websocket head tls)
# FUZZ_COVERAGE=1 adds clang's source-based coverage (into build/fuzz-cov
# unless FUZZ_OUT says otherwise): fuzz/coverage.sh reads it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PY:-.venv/bin/python}
CC=${FUZZ_CC:-clang-14}
COV=${FUZZ_COVERAGE:-0}
if [ "$COV" = 1 ]; then
    OUT=${FUZZ_OUT:-build/fuzz-cov}
else
    OUT=${FUZZ_OUT:-build/fuzz}
fi
TARGETS=${*:-http websocket head tls}

pyvar() { "$PY" -c "import sysconfig; print(sysconfig.get_config_var('$1') or '')"; }
PY_INC=$(pyvar INCLUDEPY)
PY_LIBDIR=$(pyvar LIBDIR)
PY_LDVERSION=$(pyvar LDVERSION)
PY_SHARED=$(pyvar Py_ENABLE_SHARED)
if [ "$PY_SHARED" != 1 ]; then
    echo "fuzz/build.sh: $PY has no shared libpython; use a --enable-shared build" >&2
    exit 1
fi

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="-std=c11 -g -O1 $SAN -Icsrc -I/usr/share/include/llhttp -I/usr/share \
-I$PY_INC $(pkg-config --cflags libuv openssl zlib) -Wall -Wno-unused-parameter"
if [ "$COV" = 1 ]; then
    CFLAGS="$CFLAGS -fprofile-instr-generate -fcoverage-mapping"
fi
LIBS="-L$PY_LIBDIR -Wl,-rpath,$PY_LIBDIR -lpython$PY_LDVERSION \
$(pkg-config --libs libuv openssl zlib) -lwslay -lm -ldl -lpthread"

# The extension's objects, once for every target (rebuilt when a source or
# header is newer).
mkdir -p "$OUT/obj"
objs=()
for src in csrc/*.c; do
    case $src in csrc/layer*.c) continue ;; esac
    obj="$OUT/obj/$(basename "${src%.c}").o"
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find csrc -name '*.h' -newer "$obj")" ]; then
        # shellcheck disable=SC2086
        $CC $CFLAGS -fsanitize=fuzzer-no-link -c "$src" -o "$obj"
    fi
    objs+=("$obj")
done

for t in $TARGETS; do
    # shellcheck disable=SC2086
    $CC $CFLAGS -fsanitize=fuzzer -DCD_FUZZ_TARGET="\"$t\"" -DCD_FUZZ_ROOT="\"$ROOT\"" \
        fuzz/driver.c "${objs[@]}" $LIBS -o "$OUT/$t"
done
echo "fuzz/build.sh: built $(for t in $TARGETS; do printf '%s ' "$OUT/$t"; done)"
