"""When a loop turn sends to many WebSocket clients, the first ones get
their messages while the turn goes on, not only when it ends."""

from __future__ import annotations

import os

from .test_websocket import frame, raw_handshake, read_frame

APP = "tests.apps.wsflush:app"
MEMBERS = 12  # Above the flush batch (CD_LOOP_FLUSH_BATCH, 8).


def test_sends_of_one_turn_leave_before_the_turn_ends(serve, tmp_path):
    # Each member sends in its own callback of one turn; a callback queued
    # behind them blocks the loop for 2 s and then creates the marker.
    # Output waited for the poll after the turn, so no member could have
    # its message before the marker existed.
    proc = serve(APP)
    marker = tmp_path / "blocked-done"
    members = [raw_handshake(proc.port, "/member") for _ in range(MEMBERS)]
    trig = raw_handshake(proc.port, f"/go?marker={marker}")
    try:
        trig.sendall(frame(0x1, b"go"))
        assert read_frame(trig) == (0x1, f"woke {MEMBERS}".encode())
        first = members[0]
        first.settimeout(10)
        assert read_frame(first) == (0x1, b"hello")
        assert not os.path.exists(marker), "the first member's message waited for the turn's end"
        # Every member gets its message, once; the loop then runs on.
        for sock in members[1:]:
            sock.settimeout(10)
            assert read_frame(sock) == (0x1, b"hello")
        assert marker.exists()
    finally:
        for sock in [*members, trig]:
            sock.sendall(frame(0x8, b"\x03\xe8"))
            sock.close()
