"""When a loop turn sends to many WebSocket clients, the first ones get
their messages while the turn goes on, not only when it ends."""

from __future__ import annotations

import os
import socket
import struct

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


def read_data_frame(sock) -> tuple[int, bytes]:
    """The next frame that is not a ping (answered)."""
    while True:
        op, data = read_frame(sock)
        if op != 0x9:
            return op, data
        sock.sendall(frame(0xA, data))


def test_a_turn_sending_to_members_that_close_reset_or_lag_serves_the_rest(serve):
    # The flush between callbacks (CD_LOOP_FLUSH_BATCH) meets conns that
    # close in their own callback (close after writes), whose peer reset
    # (a write error or a close while corked), and 1 MiB messages that
    # stay queued: every other member gets all it was sent, in order, and
    # the server serves on (the fixture fails on a crash).
    proc = serve("tests.apps.wsflush_mixed:app")
    modes = ["plain", "close", "reset", "big", "plain", "reset", "close", "big",
             "plain", "reset", "close", "plain", "big", "plain"]
    for r in range(3):
        order = modes[r:] + modes[:r]
        socks = [raw_handshake(proc.port, f"/member?mode={'plain' if m == 'reset' else m}")
                 for m in order]
        trig = raw_handshake(proc.port, "/go")
        trig.sendall(frame(0x1, b"go"))
        for m, sock in zip(order, socks, strict=True):
            if m == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
        assert read_data_frame(trig)[1].startswith(b"woke ")
        for m, sock in zip(order, socks, strict=True):
            if m == "reset":
                continue
            sock.settimeout(20)
            if m == "big":
                assert read_data_frame(sock) == (0x2, b"x" * (1 << 20))
            assert read_data_frame(sock) == (0x1, b"hello")
            if m == "close":
                op, data = read_data_frame(sock)
                assert (op, data[:2]) == (0x8, b"\x03\xe8")
            else:
                assert read_data_frame(sock) == (0x1, b"again")
        for sock in [*socks, trig]:
            if sock.fileno() >= 0:
                try:
                    sock.sendall(frame(0x8, b"\x03\xe8"))
                except OSError:
                    pass
                sock.close()
