#!/usr/bin/env bash
# Runs the libFuzzer targets built by fuzz/build.sh.
#   fuzz/run.sh fuzz  [target...]  FUZZ_SECONDS (default 60) per target on a
#                                  scratch copy, then merges new coverage
#                                  into fuzz/corpus/<target>.
#   fuzz/run.sh smoke [target...]  every file of fuzz/corpus/<target> once,
#                                  then FUZZ_SMOKE_SECONDS (default 20) of new
#                                  inputs; the corpus is not changed (CI).
# Exits non-zero on the first crash; the input is saved as
# fuzz/crashes/<target>-crash-<sha1> (untracked). Reproduce with
# `build/fuzz/<target> fuzz/crashes/<file>` (CDAPHNE_FUZZ_DEBUG=1 prints ops).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: fuzz/run.sh fuzz|smoke [target...]}
shift
TARGETS=${*:-http websocket head tls}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_SMOKE_SECONDS=${FUZZ_SMOKE_SECONDS:-20}
# CPython keeps memory until exit: leak checks only report noise here.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p fuzz/crashes build/fuzz/work
# -timeout: an input that hangs 30 s is a finding (a script takes < 1 s).
common=(-timeout=30 -rss_limit_mb=3072 -detect_leaks=0 -print_final_stats=1)

for t in $TARGETS; do
    bin=build/fuzz/$t
    corpus=fuzz/corpus/$t
    work=build/fuzz/work/$t
    rm -rf "$work"
    mkdir -p "$work" "$corpus"
    prefix=fuzz/crashes/$t-
    case $mode in
        fuzz)
            echo "fuzz: $t for ${FUZZ_SECONDS}s"
            "$bin" "${common[@]}" -artifact_prefix="$prefix" \
                -max_total_time="$FUZZ_SECONDS" "$work" "$corpus"
            echo "fuzz: merging new coverage of $t into $corpus"
            "$bin" "${common[@]}" -artifact_prefix="$prefix" -merge=1 "$corpus" "$work"
            ;;
        smoke)
            echo "fuzz-smoke: $t: the corpus ($(ls "$corpus" | wc -l) files)"
            "$bin" "${common[@]}" -artifact_prefix="$prefix" -runs=0 "$corpus"
            echo "fuzz-smoke: $t: ${FUZZ_SMOKE_SECONDS}s of new inputs"
            "$bin" "${common[@]}" -artifact_prefix="$prefix" \
                -max_total_time="$FUZZ_SMOKE_SECONDS" "$work" "$corpus"
            ;;
        *) echo "fuzz/run.sh: unknown mode $mode" >&2; exit 2 ;;
    esac
done
