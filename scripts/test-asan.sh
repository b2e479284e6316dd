#!/usr/bin/env bash
# `make test-asan`: builds the extensions in place with ASan+UBSan (gcc),
# runs the whole pytest suite with libasan preloaded and PYTHONMALLOC=malloc
# (server subprocesses inherit both; tests/conftest.py strips the preload
# for non-Python programs such as chromedriver), fails if any sanitizer
# report was written, and rebuilds the normal extension in every case.
#   PY=.venv/bin/python scripts/test-asan.sh [pytest args]   (default: tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOGDIR=$(pwd)/build/asan-logs

rebuild_normal() {
    echo "test-asan: rebuilding the normal extension"
    CDAPHNE_WERROR=1 "$PY" setup.py -q build_ext --inplace --force >/dev/null
}
trap rebuild_normal EXIT

echo "test-asan: building the extension with ASan+UBSan"
CDAPHNE_ASAN=1 CDAPHNE_WERROR=1 "$PY" setup.py -q build_ext --inplace --force >/dev/null
rm -rf "$LOGDIR"
mkdir -p "$LOGDIR"

libasan=$(gcc -print-file-name=libasan.so)
rc=0
# detect_leaks=0: CPython frees little at exit, LeakSanitizer would only
# report that (leaks are tested by the churn tests instead).
# quarantine_size_mb=8: ASan's default 256 MiB quarantine holds freed memory
# back, so the server's RSS grows ~130 KiB per connection until it is full
# and the memory-growth tests (steady RSS under churn) fail; 8 MiB fills
# during their warm-up and still keeps recent frees poisoned.
# UBSan ignores log_path here: halt_on_error makes any report fail a test.
LD_PRELOAD="$libasan${LD_PRELOAD:+ $LD_PRELOAD}" \
PYTHONMALLOC=malloc \
ASAN_OPTIONS="detect_leaks=0:quarantine_size_mb=${ASAN_QUARANTINE_MB:-8}:log_path=$LOGDIR/asan" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    "$PY" -m pytest -q -p no:cacheprovider "${@:-tests}" || rc=$?

reports=$(find "$LOGDIR" -type f | sort)
if [ -n "$reports" ]; then
    echo "test-asan: sanitizer reports:" >&2
    for f in $reports; do
        echo "---- $f" >&2
        head -60 "$f" >&2
    done
    rc=1
fi
exit $rc
