#!/bin/bash
# A WebSocket echo server's CPU per message, user against kernel, and its
# system calls per message by kind.
#
#   bench/ws_split.sh [SERVER] [MESSAGES] [CONNECTIONS] [--counts]
#
# SERVER: cdaphne (default), ceiling (bench/ws_ceiling.c: bare libuv, no
# Python: the kernel's share any server of cdaphne's design pays), daphne or
# uvicorn (from the bench's peer venv, bench/.work/venv).  The server runs
# bench/apps/echo.py pinned to core 0, the C echo client (bench/
# ws_echo_client.c) on core 1, as the `ws` scenario runs them.  After one
# second of warm-up, CONNECTIONS connections (50) each send MESSAGES
# messages (2,000) of 64 bytes, one at a time, and the server's utime and
# stime over that run (/proc/PID/stat, the whole process, in clock ticks)
# are divided by the messages: exact on a loaded machine too, to a tick (keep
# MESSAGES x CONNECTIONS >= 100,000).  The client's own CPU per message
# (its getrusage, user and kernel) is printed too: at ~6-9 us it needs most
# of core 1 when the server runs at its own core's rate.
#
# --counts also runs `perf stat` on the server over the run: context
# switches, every system call, and the ones an echo server makes by kind
# (tracepoints, no hardware counters needed), packets sent and wake-ups, per
# message.  The tracepoints cost the server time: with --counts the times
# printed are those of the traced run, so compare times from runs without.
# Needs perf and root for --counts.
set -eu
cd "$(dirname "$0")/.."
SERVER=${1:-cdaphne}
N=${2:-2000}
CONNS=${3:-50}
COUNTS=${4:-}
PORT=${WS_SPLIT_PORT:-$((20000 + RANDOM % 20000))}
OUT=$(mktemp -d)
PIN0=""
PIN1=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN0="taskset -c 0"
    PIN1="taskset -c 1"
fi
CLIENT=$(.venv/bin/python -c 'from bench import env; print(env.build_ws_client(lambda s: None))')
case $SERVER in
cdaphne) CMD=".venv/bin/python -m cdaphne -b 127.0.0.1 -p $PORT --no-access-log echo:app" ;;
ceiling)
    BIN=$(.venv/bin/python -c 'from bench import env; print(env.build_ws_ceiling(lambda s: None))')
    CMD="$BIN $PORT"
    ;;
daphne) CMD="bench/.work/venv/bin/daphne -b 127.0.0.1 -p $PORT -v 0 echo:app" ;;
uvicorn)
    CMD="bench/.work/venv/bin/uvicorn echo:app --host 127.0.0.1 --port $PORT --http httptools
         --loop uvloop --ws websockets --no-access-log --log-level warning"
    ;;
*)
    echo "unknown server $SERVER (cdaphne, ceiling, daphne, uvicorn)" >&2
    exit 2
    ;;
esac
# shellcheck disable=SC2086 # PIN0 and CMD are words on purpose
PYTHONPATH=python:bench/apps $PIN0 $CMD >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true; rm -rf "$OUT"' EXIT
URL=ws://127.0.0.1:$PORT/
i=0
# The client's handshake is the readiness probe (the ceiling answers no HTTP).
until $CLIENT echo --url "$URL" --connections 1 --messages 1 2>/dev/null | grep -q '"connected": 1,'; do
    i=$((i + 1))
    [ $i -lt 300 ] || { echo "server did not start" >&2; cat "$OUT/server.log" >&2; exit 1; }
    sleep 0.1
done
$PIN1 "$CLIENT" echo --url "$URL" --connections "$CONNS" --duration 1 >/dev/null
EVENTS=task-clock,context-switches,raw_syscalls:sys_enter
for call in read write writev readv recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait \
    epoll_ctl futex getpid clock_gettime; do
    EVENTS=$EVENTS,syscalls:sys_enter_$call
done
EVENTS=$EVENTS,net:net_dev_queue,sched:sched_wakeup
read -r UT0 ST0 < <(awk '{print $14, $15}' /proc/$SERVER_PID/stat)
if [ "$COUNTS" = --counts ]; then
    perf stat -x, -e "$EVENTS" -p $SERVER_PID -o "$OUT/perf.txt" &
    PERF=$!
    sleep 0.5
fi
T0=$(date +%s.%N)
$PIN1 "$CLIENT" echo --url "$URL" --connections "$CONNS" --messages "$N" >"$OUT/client.json"
T1=$(date +%s.%N)
read -r UT1 ST1 < <(awk '{print $14, $15}' /proc/$SERVER_PID/stat)
if [ "$COUNTS" = --counts ]; then
    kill -INT $PERF
    wait $PERF || true
fi
grep -q "\"connected\": $CONNS, .*\"mismatches\": 0, \"closed_early\": 0," "$OUT/client.json" || {
    echo "the echo run failed:" >&2
    cat "$OUT/client.json" "$OUT/server.log" >&2
    exit 1
}
M=$((N * CONNS))
CLIENT_CPU=$(sed -n 's/.*"client_cpu_s": \([0-9.]*\).*/\1/p' "$OUT/client.json")
awk -v s="$SERVER" -v m=$M -v hz="$(getconf CLK_TCK)" -v u0="$UT0" -v u1="$UT1" \
    -v s0="$ST0" -v s1="$ST1" -v t0="$T0" -v t1="$T1" -v c="$CLIENT_CPU" 'BEGIN {
    u = (u1 - u0) * 1e6 / hz / m; k = (s1 - s0) * 1e6 / hz / m
    printf "%s: %d messages in %.2f s (%.0f/s); CPU per message: user %.2f us, " \
        "kernel %.2f us, total %.2f us (kernel %.0f%%; %d + %d ticks); the client %.2f us\n",
        s, m, t1 - t0, m / (t1 - t0), u, k, u + k, 100 * k / (u + k), u1 - u0, s1 - s0,
        c * 1e6 / m
}'
if [ "$COUNTS" = --counts ]; then
    awk -F, -v m=$M '$1 ~ /^[0-9.]+$/ && $1 > 0 {
        printf "  %-34s %12s  %8.4f per message\n", $3, $1, $1 / m
    }' "$OUT/perf.txt"
fi
