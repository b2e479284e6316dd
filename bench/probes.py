"""Checks of one real response before any load: status, body, pipelining, WebSocket echo.

Each returns None when the server answered correctly, else a short reason.
Standard library only, so cdaphne can be probed without the peer venv.
"""

import base64
import http.client
import os
import socket
import ssl
import struct
import time

HELLO_BODY = b"Hello, world!"


def http_probe(
    host: str, port: int, content_type: str | None, timeout: float = 10.0, tls: bool = False
) -> str | None:
    """GET / must return 200 with the hello-world body (and this content-type, if given).

    tls: over https, the certificate not checked (the bench's self-signed one)."""
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ctx
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
        ctype = resp.getheader("content-type")
    except (OSError, http.client.HTTPException) as exc:
        return f"GET / failed: {exc!r}"
    finally:
        conn.close()
    if resp.status != 200:
        return f"GET / returned status {resp.status}"
    if body != HELLO_BODY:
        return f"GET / returned body {body[:80]!r}"
    if content_type is not None and (ctype or "").split(";")[0].strip() != content_type:
        return f"GET / returned content-type {ctype!r}"
    return None


def _request(host: str, port: int) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


def pipeline_probe(host: str, port: int, depth: int, timeout: float = 5.0) -> str | None:
    """Send `depth` GETs in one write; all `depth` hello responses must come back in order."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_request(host, port) * depth)
            while data.count(HELLO_BODY) < depth and time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return f"pipelined GETs failed: {exc!r}"
    got = data.count(HELLO_BODY)
    statuses = data.count(b"HTTP/1.1 200")
    if got < depth or statuses < depth:
        correct = min(got, statuses)
        return f"{depth} pipelined GETs got {correct} correct responses in {timeout:.0f} s"
    return None


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payloads under 64 KiB)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return head + mask + masked


def _read_exact(sock: socket.socket, n: int, buf: bytearray) -> bytes:
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


def ws_probe(host: str, port: int, timeout: float = 10.0) -> str | None:
    """Open a WebSocket, echo one text and one binary message, close cleanly."""
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(handshake)
            buf = bytearray()
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return "connection closed during the WebSocket handshake"
                buf += chunk
            head, _, rest = bytes(buf).partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                return f"WebSocket handshake answered {head.splitlines()[0]!r}"
            buf = bytearray(rest)
            for opcode, payload in ((0x1, "héllo".encode()), (0x2, bytes(range(200)))):
                sock.sendall(_ws_frame(opcode, payload))
                b0, b1 = _read_exact(sock, 2, buf)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", _read_exact(sock, 2, buf))
                elif n == 127:
                    (n,) = struct.unpack("!Q", _read_exact(sock, 8, buf))
                echoed = _read_exact(sock, n, buf)
                if (b0 & 0x0F) != opcode or echoed != payload:
                    return f"echo mismatch: opcode {b0 & 0x0F} payload {echoed[:40]!r}"
            sock.sendall(_ws_frame(0x8, struct.pack("!H", 1000)))
    except (OSError, ValueError) as exc:
        return f"WebSocket echo failed: {exc!r}"
    return None
