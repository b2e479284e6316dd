"""When a loop turn sends to many WebSocket clients, the first ones get
their messages while the turn goes on, not only when it ends."""

from __future__ import annotations

import os
import random
import socket
import struct
import threading

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


def test_small_frames_queued_reset_and_reused_come_out_whole(serve):
    # Frames up to 1 KiB go out of write blocks the loop reuses once sent
    # (conn.c, cd_conn_block).  A client that does not read keeps its echoes
    # queued in the server's writes; another resets with its echoes queued
    # (its blocks go back mid-stream); a third echoes while both are so,
    # pipelined and one at a time: every client that reads gets each frame
    # it sent, byte for byte and in order, at every size around the limit.
    proc = serve("tests.apps.ws:echo")
    rng = random.Random(11)
    sizes = [0, 1, 125, 126, 1019, 1020, 1021, 1024, 1025, 1030]

    def payloads(n: int) -> list[bytes]:
        return [rng.randbytes(sizes[i % len(sizes)]) for i in range(n)]

    def send_all(sock, sent: list[bytes]) -> None:
        for p in sent:
            sock.sendall(frame(0x2, p))

    lagger, resetter = raw_handshake(proc.port), raw_handshake(proc.port)
    lag_sent, reset_sent = payloads(600), payloads(600)
    senders = [threading.Thread(target=send_all, args=(lagger, lag_sent)),
               threading.Thread(target=send_all, args=(resetter, reset_sent))]
    for t in senders:
        t.start()
    for t in senders:
        t.join(30)
    resetter.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    resetter.close()
    reader = raw_handshake(proc.port)
    reader.settimeout(10)
    try:
        for batch in (1, 50, 1, 50):
            for _ in range(20):
                sent = payloads(batch)
                reader.sendall(b"".join(frame(0x2, p) for p in sent))
                assert [read_data_frame(reader) for _ in sent] == [(0x2, p) for p in sent]
        lagger.settimeout(10)
        got = [read_data_frame(lagger) for _ in lag_sent]
        assert got == [(0x2, p) for p in lag_sent]
    finally:
        for sock in (reader, lagger):
            sock.sendall(frame(0x8, b"\x03\xe8"))
            sock.close()
