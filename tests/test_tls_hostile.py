"""TLS against hostile and unusual clients: what a connection keeps after
a large response, records cut anyhow, peers that close or flood in odd
ways.  Real server processes, real TLS clients (Python's ssl, openssl)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import ssl
import time

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .conftest import Reader, wait_until
from .test_http_resources import rss_kb
from .test_tls import (  # noqa: F401
    APP,
    client_ctx,
    get,
    pki,
    tls_connect,
    tls_flags,
    tls_server,
)


def test_idle_conns_give_back_a_large_response_s_ciphertext(tls_server, pki):  # noqa: F811
    # Regression: OpenSSL's output memory BIO keeps the largest size it
    # ever held, and a flush encrypted all of c->outq into it at once: a
    # 4 MiB response in one body message left 4 MiB on each idle
    # keep-alive conn (40 conns: +160 MiB; plain HTTP: +4 MiB).
    pid = tls_server.proc.pid
    size = 4 << 20
    path = b"/stream?n=1&size=%d" % size
    warm = tls_connect(tls_server, pki)
    warm.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path)
    assert len(Reader(warm, timeout=30).response().body) == size
    before = rss_kb(pid)
    held = [warm]
    try:
        for _ in range(40):
            sock = tls_connect(tls_server, pki)
            held.append(sock)
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path)
            assert len(Reader(sock, timeout=30).response().body) == size
        grown = rss_kb(pid) - before
        assert grown < 48 << 10, f"{grown} KiB for 40 idle conns"
        # They are still usable.
        held[-1].sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert Reader(held[-1]).response().body == b"Hello, world!"
    finally:
        for sock in held:
            sock.close()
    assert get(tls_server, pki, "/hello").status_code == 200


def test_idle_conns_give_back_the_read_buffer_of_an_upload(serve, pki):  # noqa: F811
    # Regression: the ciphertext of each socket read went through a memory
    # BIO that kept its largest size: every conn that ever read a full
    # --tls-read-size kept 4/3 of it while idle (a plain conn keeps no
    # input buffer when idle).
    proc = serve(APP, *tls_flags(pki, "--tls-read-size", "1048576"))
    pid = proc.proc.pid
    body = b"u" * (4 << 20)
    request = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body)

    def upload(sock) -> None:
        sock.sendall(request + body)
        assert json.loads(Reader(sock, timeout=30).response().body)["size"] == len(body)

    held = [tls_connect(proc, pki)]
    try:
        upload(held[0])
        before = rss_kb(pid)
        for _ in range(40):
            held.append(tls_connect(proc, pki))
            upload(held[-1])
        grown = rss_kb(pid) - before
        assert grown < 16 << 10, f"{grown} KiB for 40 idle conns"
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("endpoint", [False, True])
def test_tls12_client_with_python_s_default_ciphers_is_served_with_aead(serve, pki, endpoint):  # noqa: F811
    # Regression: the default cipher list was uvicorn's old "TLSv1", which
    # leaves TLS 1.2 only CBC suites with SHA-1: Python's ssl (3.10+,
    # httpx, websockets) offers none of them, so a client capped at TLS
    # 1.2 got a handshake_failure alert.  uvicorn now leaves OpenSSL's
    # defaults, Daphne (Twisted) prefers ECDHE with AES-GCM/ChaCha20.
    if endpoint:
        ep = (
            f"ssl:0:privateKey={pki / 'server.key'}:certKey={pki / 'server.pem'}"
            ":interface=127.0.0.1"
        )
        proc = serve(APP, "-e", ep, port=False)
    else:
        proc = serve(APP, *tls_flags(pki))
    ctx = client_ctx(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    raw = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.version() == "TLSv1.2"
        name, _, _ = sock.cipher()
        assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name), name
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert Reader(sock).response().body == b"Hello, world!"


def test_close_notify_from_the_client_is_answered_with_ours(tls_server, pki):  # noqa: F811
    # Regression: the peer's close_notify ended the conn without ours, so
    # a client that closes cleanly and waits for the answer (Python's
    # unwrap(), as asyncio's SSL transport does too) saw an EOF "in
    # violation of protocol".  uvicorn (asyncio) answers it.
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = client_ctx(pki)
        ctx.maximum_version = version
        raw = socket.create_connection(("127.0.0.1", tls_server.port), timeout=10)
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert Reader(sock).response().body == b"Hello, world!"
        plain = sock.unwrap()  # Sends ours, reads the server's close_notify.
        assert plain.recv(100) == b""
        plain.close()
    assert get(tls_server, pki, "/hello").status_code == 200


# ---- a hand-built TLS 1.2 record writer ---------------------------------------


def _prf_sha256(secret: bytes, label: bytes, seed: bytes, n: int) -> bytes:
    """TLS 1.2's PRF (RFC 5246 5) with SHA-256."""
    seed = label + seed
    out, a = b"", seed
    while len(out) < n:
        a = hmac.new(secret, a, hashlib.sha256).digest()
        out += hmac.new(secret, a + seed, hashlib.sha256).digest()
    return out[:n]


def _hkdf_expand_label(h, secret: bytes, label: bytes, n: int) -> bytes:
    """TLS 1.3's HKDF-Expand-Label (RFC 8446 7.1) with an empty context."""
    full = b"tls13 " + label
    info = n.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(secret, t + info + bytes([i]), h).digest()
        out += t
        i += 1
    return out[:n]


class Forger:
    """A TLS session shaken hands by Python's ssl over memory BIOs, whose
    client secrets come from its key log: then it writes records of its
    own making on the raw socket (batch()), encrypted as the client."""

    version = ssl.TLSVersion.TLSv1_2

    def __init__(self, proc, certs, keylog) -> None:
        ctx = client_ctx(certs)
        ctx.minimum_version = ctx.maximum_version = self.version
        if self.version == ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        ctx.keylog_filename = str(keylog)
        self.sock = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        self.server_flight = b""
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(outgoing.read())
                data = self.sock.recv(65536)
                assert data, "the server closed during the handshake"
                self.server_flight += data
                incoming.write(data)
        self.sock.sendall(outgoing.read())
        self.cipher = obj.cipher()[0]
        self.keys = dict(ln.split(" ", 1) for ln in keylog.read_text().splitlines() if ln)

    def batch(self) -> bytes:
        raise NotImplementedError

    def flood(self, budget: int, stall: float = 5.0) -> tuple[int, bool]:
        """Sends batch() after batch() and never reads; (bytes sent,
        whether the server stopped taking them) once budget is sent or a
        send waited `stall` seconds."""
        self.sock.settimeout(stall)
        sent = 0
        try:
            while sent < budget:
                blob = self.batch()
                self.sock.sendall(blob)
                sent += len(blob)
        except TimeoutError:
            return sent, True
        except OSError:
            return sent, False  # reset: the server dropped it
        return sent, False


class ClientHelloForger(Forger):
    """TLS 1.2 (ECDHE-ECDSA-AES128-GCM-SHA256): encrypted ClientHellos, each
    of which makes OpenSSL queue a no_renegotiation warning alert."""

    def __init__(self, proc, certs, keylog) -> None:
        super().__init__(proc, certs, keylog)
        # The ServerHello opens the server's flight: record header (5),
        # handshake header (4), version (2), then its random.
        server_random = self.server_flight[11:43]
        client_random, master = self.keys["CLIENT_RANDOM"].split()
        block = _prf_sha256(bytes.fromhex(master), b"key expansion",
                            server_random + bytes.fromhex(client_random), 40)
        self.aead = AESGCM(block[0:16])  # client write key
        self.salt = block[32:36]  # client write IV
        self.seq = 1  # the Finished was 0

    def batch(self) -> bytes:
        out = []
        hello = b"\x01\x00\x00\x00"  # handshake type 1, length 0
        for _ in range(2000):
            explicit = self.seq.to_bytes(8, "big")
            aad = explicit + b"\x16\x03\x03" + len(hello).to_bytes(2, "big")
            sealed = self.aead.encrypt(self.salt + explicit, hello, aad)
            out.append(b"\x16\x03\x03" + (8 + len(sealed)).to_bytes(2, "big") + explicit + sealed)
            self.seq += 1
        return b"".join(out)


class KeyUpdateForger(Forger):
    """TLS 1.3: KeyUpdate(update_requested) messages, each of which makes
    OpenSSL queue a KeyUpdate of its own; every one moves our keys on."""

    version = ssl.TLSVersion.TLSv1_3

    def __init__(self, proc, certs, keylog) -> None:
        super().__init__(proc, certs, keylog)
        self.hash = hashlib.sha384 if self.cipher.endswith("SHA384") else hashlib.sha256
        self.key_len = 32 if "AES_256" in self.cipher else 16
        assert "GCM" in self.cipher, self.cipher
        self.secret = bytes.fromhex(self.keys["CLIENT_TRAFFIC_SECRET_0"].split()[1])

    def batch(self) -> bytes:
        out = []
        inner = b"\x18\x00\x00\x01\x01" + b"\x16"  # KeyUpdate, then the content type
        header = b"\x17\x03\x03" + (len(inner) + 16).to_bytes(2, "big")
        for _ in range(1000):
            h, secret = self.hash, self.secret
            key = _hkdf_expand_label(h, secret, b"key", self.key_len)
            iv = _hkdf_expand_label(h, secret, b"iv", 12)
            out.append(header + AESGCM(key).encrypt(iv, inner, header))  # sequence 0
            self.secret = _hkdf_expand_label(h, secret, b"traffic upd", h().digest_size)
        return b"".join(out)


@pytest.mark.parametrize(
    ("forger", "budget"),
    [(ClientHelloForger, 48 << 20), (KeyUpdateForger, 24 << 20)],
    ids=["tls12-client-hello", "tls13-key-update"],
)
def test_records_that_make_openssl_answer_from_a_peer_that_never_reads_stop_reading(
        serve, pki, tmp_path, forger, budget):  # noqa: F811
    # Regression: each encrypted ClientHello after a TLS 1.2 handshake
    # makes OpenSSL queue a 31-byte no_renegotiation warning alert and go
    # on, each TLS 1.3 KeyUpdate asking for ours a KeyUpdate; a peer that
    # sent them and never read had the server read on and queue the
    # answers without bound (100 MB of ClientHellos: +87 MB of RSS; 30 MB
    # of KeyUpdates: +24 MB).  The server now stops reading while its
    # queued output is over --write-buffer-size, as a WebSocket's pongs do.
    proc = serve(APP, *tls_flags(pki, "--timeout-keep-alive", "120"))
    pid = proc.proc.pid
    before = rss_kb(pid)
    flooder = forger(proc, pki, tmp_path / "keys")
    try:
        sent, stalled = flooder.flood(budget)
        grown = rss_kb(pid) - before
        assert stalled, f"the server read all {sent} bytes"
        # The kernel's socket buffers hold some MiB; the server keeps at
        # most --write-buffer-size (1 MiB) plus one read's answers.
        assert sent < 16 << 20, sent
        assert grown < 12 << 10, f"+{grown} KiB"
        # Others are served meanwhile.
        assert get(proc, pki, "/hello").status_code == 200
    finally:
        flooder.sock.close()
    assert get(proc, pki, "/hello").status_code == 200


def test_tls12_flooding_peer_held_from_reading_is_still_dropped_when_idle(serve, pki, tmp_path):  # noqa: F811
    proc = serve(APP, *tls_flags(pki, "--timeout-keep-alive", "2"))
    flooder = ClientHelloForger(proc, pki, tmp_path / "keys")
    with flooder.sock:
        flooder.flood(48 << 20)
        # It reads now: the alerts, then the end (a FIN or a reset).
        flooder.sock.settimeout(30)
        try:
            while flooder.sock.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass
    assert get(proc, pki, "/hello").status_code == 200


def _server_side(server_port: int, client_port: int) -> tuple[int, int] | None:
    """(TCP state, bytes unread) of the server's socket for that client,
    from /proc/net/tcp; None once it is gone."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return int(fields[3], 16), int(fields[4].split(":")[1], 16)
    return None


TCP_ESTABLISHED, TCP_CLOSE_WAIT = 0x01, 0x08


def test_peer_leaving_a_tls_conn_held_from_reading_is_seen(serve, pki, tmp_path):  # noqa: F811
    # Regression: a conn holding its reading (the peer sent records that
    # make OpenSSL answer and reads none of it) watched for nothing but a
    # write error; the peer's FIN waited for the timers (here 120 s).  The
    # hold now watches for it, as a paused conn does.
    proc = serve(APP, *tls_flags(pki, "--timeout-keep-alive", "120", "--header-timeout", "120"))
    flooder = ClientHelloForger(proc, pki, tmp_path / "keys")
    with flooder.sock:
        client_port = flooder.sock.getsockname()[1]
        flooder.sock.settimeout(10)
        held = False
        for _ in range(1000):  # Until the server leaves bytes unread.
            flooder.sock.sendall(flooder.batch())
            time.sleep(0.05)  # The server reads what it takes meanwhile.
            side = _server_side(proc.port, client_port)
            if side is not None and side[1] > 0:
                time.sleep(0.3)
                again = _server_side(proc.port, client_port)
                if again is not None and again[1] >= side[1]:
                    held = True
                    break
        assert held, "the server read everything"
        flooder.sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: (_server_side(proc.port, client_port) or (0, 0))[0]
                   not in (TCP_ESTABLISHED, TCP_CLOSE_WAIT), timeout=10)
    assert get(proc, pki, "/hello").status_code == 200
