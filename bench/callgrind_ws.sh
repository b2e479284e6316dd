#!/bin/sh
# Instructions per WebSocket echo message in the server process (callgrind).
#
#   bench/callgrind_ws.sh [SECONDS] [CONNECTIONS] [OUTDIR]
#
# Starts cdaphne with bench/apps/echo.py under callgrind with collection off,
# warms it up with the C echo client (bench/ws_echo_client.c, built by the
# bench), turns collection on for SECONDS of echo at CONNECTIONS connections,
# and prints the instructions counted divided by the messages echoed (user
# space only: the kernel's share is not counted).  The profile stays in
# OUTDIR/callgrind.out for callgrind_annotate.
#
# CALLGRIND_WS_MESSAGES=N in the environment: each measured connection sends
# exactly N messages instead of running SECONDS, so two builds do the same
# work and their totals compare as they are (the handshakes, closes and the
# dump's wake-up requests are then the same fixed part of both).
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-5}
CONNS=${2:-50}
OUT=${3:-$(mktemp -d)}
PORT=${CALLGRIND_WS_PORT:-18977}
CLIENT=bench/.work/ws_echo_client
.venv/bin/python -c 'from bench import env; env.build_ws_client(print)' >/dev/null
PYTHONPATH=python:bench/apps valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$OUT/callgrind.out" \
    .venv/bin/python -m cdaphne -b 127.0.0.1 -p "$PORT" --no-access-log echo:app \
    2>"$OUT/server.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
i=0
until grep -q "Listening on" "$OUT/server.log"; do
    i=$((i + 1))
    [ $i -lt 600 ] || { echo "server did not start" >&2; cat "$OUT/server.log" >&2; exit 1; }
    sleep 0.1
done
URL=ws://127.0.0.1:$PORT/
$CLIENT echo --url "$URL" --connections "$CONNS" --duration 2 >/dev/null
# Valgrind reads its commands only while the server runs code: each command is
# sent in the background and taken when the next client wakes the server (the
# handshakes of the measured connections are counted: < 1% of the total).
callgrind_control -i on $SERVER >/dev/null 2>&1 &
CONTROL=$!
sleep 1
if [ -n "${CALLGRIND_WS_MESSAGES:-}" ]; then
    RUN="--messages $CALLGRIND_WS_MESSAGES"
else
    RUN="--duration $SECS"
fi
# shellcheck disable=SC2086 # RUN is two words on purpose
$CLIENT echo --url "$URL" --connections "$CONNS" $RUN >"$OUT/client.json"
wait $CONTROL
callgrind_control -d $SERVER >/dev/null 2>&1 &
CONTROL=$!
while kill -0 $CONTROL 2>/dev/null; do
    sleep 0.5
    curl -s -o /dev/null "http://127.0.0.1:$PORT/" || true
done
kill -INT $SERVER
wait $SERVER || true
trap - EXIT
MSGS=$(sed -n 's/.*"messages": \([0-9]*\).*/\1/p' "$OUT/client.json")
DUMP=$(ls "$OUT"/callgrind.out.* | head -1)
IR=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$DUMP")
echo "messages $MSGS, instructions $IR, per message $((IR / MSGS)) ($DUMP)"
