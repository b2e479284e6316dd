#!/usr/bin/env bash
# Which lines of csrc/*.c the fuzz corpus reaches: builds the targets with
# clang's source-based coverage (FUZZ_COVERAGE=1 fuzz/build.sh), runs each
# over fuzz/corpus/<target> once, merges the profiles and prints
# llvm-cov's per-file report; the per-function table of functions never
# reached goes to build/fuzz-cov/uncovered.txt.
#   fuzz/coverage.sh [target...]   (default: http websocket head tls)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=${*:-http websocket head tls}
OUT=build/fuzz-cov
FUZZ_COVERAGE=1 FUZZ_OUT=$OUT fuzz/build.sh $TARGETS
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}
rm -rf "$OUT/prof"
mkdir -p "$OUT/prof"
objs=()
for t in $TARGETS; do
    LLVM_PROFILE_FILE="$OUT/prof/$t.profraw" "$OUT/$t" -timeout=30 -rss_limit_mb=3072 \
        -detect_leaks=0 -runs=0 "fuzz/corpus/$t" 2>"$OUT/prof/$t.log" ||
        { echo "coverage: $t failed (see $OUT/prof/$t.log)" >&2; exit 1; }
    objs+=(-object "$OUT/$t")
done
llvm-profdata-14 merge -sparse "$OUT"/prof/*.profraw -o "$OUT/cov.profdata"
first=${objs[1]}
llvm-cov-14 report "$first" "${objs[@]:2}" -instr-profile="$OUT/cov.profdata" csrc/*.c |
    sed "s#$(pwd)/##"
llvm-cov-14 report "$first" "${objs[@]:2}" -instr-profile="$OUT/cov.profdata" \
    -show-functions csrc/*.c | awk '(/^Name/ && !h++) || ($2 > 0 && $3 == $2)' \
    >"$OUT/uncovered.txt" || true
echo "coverage: functions never reached in $OUT/uncovered.txt"
