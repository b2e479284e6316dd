"""TLS: uvicorn's --ssl-* flags and Daphne's ssl: endpoints, against real
clients (httpx, websocket-client, openssl s_client, Python's ssl) and a test
CA the suite makes with the openssl command."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websocket

from .conftest import ROOT, Reader, ServerProcess, wait_until

APP = "tests.apps.tls:app"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(d: Path, name: str, cn: str, ext: str) -> None:
    """A P-256 key and a certificate for it signed by the test CA."""
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    (d / f"{name}.ext").write_text(
        ext + "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
             "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    """ca.pem; server.pem/.key (localhost, 127.0.0.1); client.pem/.key;
    server-enc.key (password "s3cret"); other.pem/.key (not the server's)."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=cdaphne test CA",
             # Python 3.13's strict verification wants these on a CA.
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _issue(d, "server", "localhost",
           "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _issue(d, "client", "test-client", "extendedKeyUsage=clientAuth\n")
    _issue(d, "other", "other", "subjectAltName=DNS:other\n")
    _openssl("pkey", "-in", "server.key", "-aes256", "-passout", "pass:s3cret",
             "-out", "server-enc.key", cwd=d)
    return d


def tls_flags(pki: Path, *extra: str) -> tuple[str, ...]:
    return ("--ssl-certfile", str(pki / "server.pem"), "--ssl-keyfile", str(pki / "server.key"),
            *extra)


@pytest.fixture
def tls_server(serve, pki) -> ServerProcess:
    return serve(APP, *tls_flags(pki))


def https(proc: ServerProcess, path: str = "/") -> str:
    return f"https://localhost:{proc.port}{path}"


def client_ctx(pki: Path, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return ctx


def tls_connect(proc: ServerProcess, pki: Path, timeout: float = 10.0,
                cert: bool = False) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", proc.port), timeout=timeout)
    return client_ctx(pki, cert).wrap_socket(raw, server_hostname="localhost")


def get(proc: ServerProcess, pki: Path, path: str) -> httpx.Response:
    return httpx.get(https(proc, path), verify=client_ctx(pki), timeout=10)


def s_client(proc: ServerProcess, pki: Path, *args: str, data: bytes = b"") -> str:
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{proc.port}", "-servername",
         "localhost", "-CAfile", str(pki / "ca.pem"), "-ign_eof", *args],
        input=data, capture_output=True, timeout=20)
    return r.stdout.decode("latin-1") + r.stderr.decode("latin-1")


def client_hello() -> bytes:
    """A real ClientHello, as a TLS client's first flight."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def bio_handshake(
    sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> None:
    """Drives obj's handshake over sock (memory BIOs: the test decides what goes out when)."""
    while True:
        try:
            obj.do_handshake()
            return
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            assert data, "closed during the handshake"
            incoming.write(data)


# ---- clients -----------------------------------------------------------------

def test_https_request_verified_against_the_test_ca(tls_server, pki):
    r = get(tls_server, pki, "/hello")
    assert r.status_code == 200
    assert r.text == "Hello, world!"
    assert r.http_version == "HTTP/1.1"


def test_scope_scheme_https_and_tls_extension(tls_server, pki):
    scope = get(tls_server, pki, "/scope/x").json()
    assert scope["scheme"] == "https"
    tls = scope["extensions"]["tls"]
    assert tls["tls_version"] >= 0x0303
    assert isinstance(tls["cipher_suite"], int)
    assert tls["server_cert"] == (pki / "server.pem").read_text()
    assert tls["client_cert_chain"] == []
    assert tls["client_cert_name"] is None
    assert tls["server_name"] == "localhost"  # the SNI the client sent


def test_plain_http_scope_has_no_tls_extension(serve):
    proc = serve(APP)
    scope = httpx.get(proc.url("/scope/x")).json()
    assert scope["scheme"] == "http"
    assert "tls" not in scope["extensions"]


def test_wss_echo_and_scope_scheme_wss(tls_server, pki):
    ws = websocket.create_connection(
        f"wss://localhost:{tls_server.port}/scope",
        sslopt={"ca_certs": str(pki / "ca.pem")}, timeout=10)
    try:
        hello = json.loads(ws.recv())
        assert hello["scheme"] == "wss"
        assert hello["tls"]["server_name"] == "localhost"
        ws.send("ping over tls")
        assert ws.recv() == "ping over tls"
    finally:
        ws.close()
    ws = websocket.create_connection(
        f"wss://localhost:{tls_server.port}/echo",
        sslopt={"ca_certs": str(pki / "ca.pem")}, timeout=10)
    try:
        payload = bytes(range(256)) * 4096  # 1 MiB
        ws.send_binary(payload)
        assert ws.recv() == payload
    finally:
        ws.close()


def test_s_client_alpn_http11_and_tls13(tls_server, pki):
    out = s_client(tls_server, pki, "-alpn", "h2,http/1.1",
                   data=b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert "ALPN protocol: http/1.1" in out, out
    assert "TLSv1.3" in out, out
    assert "Verify return code: 0 (ok)" in out, out
    assert "HTTP/1.1 200 OK" in out, out
    assert "Hello, world!" in out


def test_s_client_tls12_works(tls_server, pki):
    out = s_client(tls_server, pki, "-tls1_2", "-alpn", "http/1.1",
                   data=b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert "Protocol  : TLSv1.2" in out, out
    assert "HTTP/1.1 200 OK" in out, out


def test_no_alpn_offered_still_serves(tls_server, pki):
    out = s_client(tls_server, pki,
                   data=b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert "No ALPN negotiated" in out, out
    assert "HTTP/1.1 200 OK" in out, out


def test_tls11_is_refused(tls_server, pki):
    # The client offers TLS 1.1 only; the server answers with a
    # protocol_version alert (70).
    out = s_client(tls_server, pki, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert "alert protocol version" in out, out
    assert "SSL alert number 70" in out, out
    assert get(tls_server, pki, "/hello").status_code == 200


# ---- hostile and broken clients ------------------------------------------------

def test_plain_http_to_a_tls_port_is_closed_and_serving_goes_on(tls_server, pki):
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        # At most a TLS alert record (type 21), never an HTTP response.
        assert data == b"" or data[0] == 21, data
    assert get(tls_server, pki, "/hello").status_code == 200


def test_random_garbage_instead_of_client_hello(tls_server, pki):
    for blob in (b"\x16\x03\x01\xff\xff" + b"\x00" * 100, bytes(range(256)) * 8,
                 b"\x16\x03\x03\x00\x05\x01\x00\x00\x01\x00"):
        with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as sock:
            sock.sendall(blob)
            sock.settimeout(10)
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    assert get(tls_server, pki, "/hello").status_code == 200


def test_handshake_cut_in_half_is_timed_out_by_the_header_timeout(serve, pki):
    proc = serve(APP, *tls_flags(pki, "--header-timeout", "1"))
    hello = client_hello()
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        sock.sendall(hello[: len(hello) // 2])
        start = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(4096) == b""
        assert time.monotonic() - start < 8
    assert get(proc, pki, "/hello").status_code == 200


def test_client_cert_required_rejects_a_client_without_one(serve, pki):
    proc = serve(APP, *tls_flags(pki, "--ssl-ca-certs", str(pki / "ca.pem"),
                                 "--ssl-cert-reqs", "2"))
    with pytest.raises((ssl.SSLError, OSError)):
        with tls_connect(proc, pki) as sock:
            # TLS 1.3: the client learns of the refusal on its first read.
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sock.recv(4096) == b""
            raise ConnectionResetError("closed without a response")
    with tls_connect(proc, pki, cert=True) as sock:
        sock.sendall(b"GET /scope/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        r = Reader(sock).response()
    assert r.status == 200
    tls = json.loads(r.body)["extensions"]["tls"]
    assert tls["client_cert_name"] == "CN=test-client"
    assert tls["client_cert_chain"][0] == (pki / "client.pem").read_text()
    assert tls["client_cert_error"] is None


# ---- HTTP/1.1 over TLS -------------------------------------------------------------

def test_keepalive_and_pipelining_over_tls(tls_server, pki):
    with tls_connect(tls_server, pki) as sock:
        for _ in range(3):
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert Reader(sock).response().body == b"Hello, world!"
        sock.sendall(b"".join(b"GET /slow?n=%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i
                              for i in range(5)))
        reader = Reader(sock)
        assert [reader.response().body for _ in range(5)] == [b"0", b"1", b"2", b"3", b"4"]


def test_large_bodies_both_ways(tls_server, pki):
    body = hashlib.sha256(b"seed").digest() * (8 << 15)  # 8 MiB
    r = httpx.post(https(tls_server, "/echo"), content=body, verify=client_ctx(pki), timeout=30)
    assert r.json()["size"] == len(body)
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()
    r = httpx.get(https(tls_server, "/big?mb=8"), verify=client_ctx(pki), timeout=30)
    assert len(r.content) == 8 << 20


def test_slow_reader_backpressure_holds(tls_server, pki):
    total = 200 << 20
    raw = socket.create_connection(("127.0.0.1", tls_server.port), timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock = client_ctx(pki).wrap_socket(raw, server_hostname="localhost")
    sock.sendall(b"GET /big?mb=200 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    time.sleep(1.0)
    first = get(tls_server, pki, "/progress").json()
    time.sleep(0.5)
    second = get(tls_server, pki, "/progress").json()
    assert first["bytes"] > 0
    assert second["bytes"] < 20 << 20, second
    assert not second["done"]
    reader = Reader(sock, timeout=30)
    reader.read_until(b"\r\n\r\n")
    got = len(reader.buf)
    while got < total:
        data = sock.recv(1 << 20)
        assert data, f"connection closed after {got} bytes"
        got += len(data)
    assert got == total
    sock.close()
    wait_until(lambda: get(tls_server, pki, "/progress").json()["done"], 10)


def test_request_body_backpressure_over_tls(serve, pki):
    proc = serve(APP, *tls_flags(pki, "--application-close-timeout", "1"))
    total = 40 << 20
    sock = tls_connect(proc, pki)
    sock.sendall(b"POST /noreceive?hold=5 HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Length: %d\r\n\r\n" % total)
    sock.setblocking(False)
    chunk = b"z" * (64 << 10)
    accepted = 0
    last = time.monotonic()
    while accepted < total and time.monotonic() - last < 1.0:
        try:
            accepted += sock.send(chunk)
            last = time.monotonic()
        except (BlockingIOError, ssl.SSLWantWriteError):
            time.sleep(0.01)
    sock.close()
    assert accepted < 12 << 20, f"server accepted {accepted} bytes without the app reading"


# ---- configuration -------------------------------------------------------------------

def test_daphne_ssl_endpoint(serve, pki):
    ep = f"ssl:0:privateKey={pki / 'server.key'}:certKey={pki / 'server.pem'}:interface=127.0.0.1"
    proc = serve(APP, "-e", ep, port=False)
    assert "(TLS)" in proc.log
    assert get(proc, pki, "/hello").text == "Hello, world!"


def test_encrypted_key_with_password(serve, pki):
    proc = serve(APP, "--ssl-certfile", str(pki / "server.pem"),
                 "--ssl-keyfile", str(pki / "server-enc.key"), "--ssl-keyfile-password", "s3cret")
    assert get(proc, pki, "/hello").status_code == 200


def test_tls_over_a_unix_socket(serve, pki, tmp_path):
    path = str(tmp_path / "tls.sock")
    serve(APP, "--uds", path, *tls_flags(pki), port=False)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(10)
    raw.connect(path)
    with client_ctx(pki).wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(b"GET /scope/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert json.loads(Reader(sock).response().body)["scheme"] == "https"


def test_tls_with_workers(serve, pki):
    proc = serve(APP, "--workers", "2", *tls_flags(pki))
    for _ in range(4):
        assert get(proc, pki, "/hello").status_code == 200


def _startup_error(*argv: str) -> tuple[int, str]:
    proc = ServerProcess(["-p", "0", *argv, APP])
    rc = proc.wait(20)
    return rc, proc.log


@pytest.mark.parametrize("workers", [(), ("--workers", "2")])
@pytest.mark.parametrize("case", ["missing_cert", "garbage_cert", "wrong_key", "bad_password",
                                  "no_password", "missing_ca"])
def test_bad_key_or_cert_fails_at_startup_with_one_line(pki, tmp_path, case, workers):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cert, key = str(pki / "server.pem"), str(pki / "server.key")
    argv = {
        "missing_cert": ["--ssl-certfile", str(tmp_path / "nope.pem"), "--ssl-keyfile", key],
        "garbage_cert": ["--ssl-certfile", str(garbage), "--ssl-keyfile", key],
        "wrong_key": ["--ssl-certfile", cert, "--ssl-keyfile", str(pki / "other.key")],
        "bad_password": ["--ssl-certfile", cert, "--ssl-keyfile", str(pki / "server-enc.key"),
                         "--ssl-keyfile-password", "wrong"],
        "no_password": ["--ssl-certfile", cert, "--ssl-keyfile", str(pki / "server-enc.key")],
        "missing_ca": ["--ssl-certfile", cert, "--ssl-keyfile", key,
                       "--ssl-ca-certs", str(tmp_path / "nope-ca.pem"), "--ssl-cert-reqs", "2"],
    }[case]
    rc, log = _startup_error(*workers, *argv)
    assert rc == 1, log
    errors = [line for line in log.splitlines() if line.startswith("cdaphne: error:")]
    assert len(errors) == 1, log
    assert "TLS" in errors[0], log
    assert "Traceback" not in log
    assert "Listening on" not in log


def test_ssl_endpoint_rejects_sslmethod_and_unknown_keys(pki):
    for ep, word in ((f"ssl:0:privateKey={pki / 'server.key'}:sslmethod=TLSv1_METHOD",
                      "sslmethod"),
                     (f"ssl:0:privateKey={pki / 'server.key'}:bogus=1", "bogus")):
        proc = ServerProcess(["-e", ep, APP])
        rc = proc.wait(20)
        assert rc == 1
        assert word in proc.log


def test_finished_request_and_close_notify_in_one_write(tls_server, pki):
    # Regression (found by the tls fuzz target): the client's Finished, a
    # request and its close_notify in one segment. The handshake completes
    # and the peer closes in the same read; the request's bytes used to be
    # parsed by an HTTP/1 parser that was never set up (llhttp abort()).
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx(pki).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as sock:
        bio_handshake(sock, obj, incoming, outgoing)
        obj.write(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        with pytest.raises(ssl.SSLWantReadError):
            obj.unwrap()
        sock.sendall(outgoing.read())
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
    assert get(tls_server, pki, "/hello").status_code == 200


def test_fuzz_tls_corpus_runs_clean():
    # The tls fuzz target's seeds and regressions through the harness on
    # the normal build (fuzz/harness.py one_input_tls: every connection
    # must end once the clients close).
    prog = ("import glob, sys\nsys.path.insert(0, 'fuzz')\nimport harness\n"
            "for f in sorted(glob.glob('fuzz/corpus/tls/*')):\n"
            "    harness.one_input_tls(open(f, 'rb').read())\n")
    r = subprocess.run([sys.executable, "-c", prog], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


def _s_client_session(proc: ServerProcess, pki: Path, *args: str,
                      steps: list[bytes]) -> str:
    """s_client with each step written on its own (its R and K commands
    must arrive as a line of their own), a moment apart."""
    p = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{proc.port}", "-servername", "localhost",
         "-CAfile", str(pki / "ca.pem"), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert p.stdin is not None
    for step in steps:
        time.sleep(0.5)
        if p.poll() is not None:
            break
        p.stdin.write(step)
        p.stdin.flush()
    # The last step asks the server to close; stdin stays open till then
    # (s_client quits at its end of input).
    try:
        p.wait(timeout=20)
    finally:
        p.kill()
        p.stdin.close()
    assert p.stdout is not None
    return p.stdout.read().decode("latin-1")


GET = b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n"
GET_CLOSE = b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def test_tls13_key_update_keeps_the_connection(tls_server, pki):
    out = _s_client_session(tls_server, pki, steps=[GET, b"K\n", GET_CLOSE])
    assert "KEYUPDATE" in out, out
    assert out.count("HTTP/1.1 200 OK") == 2, out


def test_tls12_renegotiation_is_refused(tls_server, pki):
    out = _s_client_session(tls_server, pki, "-tls1_2", steps=[GET, b"R\n", GET_CLOSE])
    assert "RENEGOTIATING" in out, out
    assert "no renegotiation" in out, out
    assert out.count("HTTP/1.1 200 OK") == 1, out
    assert get(tls_server, pki, "/hello").status_code == 200


def test_ssl_endpoint_extra_cert_chain_and_dh_parameters(serve, pki, tmp_path):
    dh = tmp_path / "dh.pem"
    subprocess.run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt",
                    "group:ffdhe2048", "-out", str(dh)], check=True, capture_output=True,
                   timeout=60)
    ep = (f"ssl:0:privateKey={pki / 'server.key'}:certKey={pki / 'server.pem'}"
          f":extraCertChain={pki / 'ca.pem'}:dhParameters={dh}:interface=127.0.0.1")
    proc = serve(APP, "-e", ep, port=False)
    out = s_client(proc, pki, "-showcerts", data=GET_CLOSE)
    # The chain the server sends: its certificate, then the extra one.
    assert " 0 s:CN = localhost" in out, out
    assert " 1 s:CN = cdaphne test CA" in out, out
    assert "HTTP/1.1 200 OK" in out, out


def test_client_cert_optional_serves_clients_with_and_without_one(serve, pki):
    proc = serve(APP, *tls_flags(pki, "--ssl-ca-certs", str(pki / "ca.pem"),
                                 "--ssl-cert-reqs", "1"))
    for cert, name in ((False, None), (True, "CN=test-client")):
        with tls_connect(proc, pki, cert=cert) as sock:
            sock.sendall(b"GET /scope/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            r = Reader(sock).response()
        assert r.status == 200
        assert json.loads(r.body)["extensions"]["tls"]["client_cert_name"] == name


def test_limit_concurrency_answers_503_over_tls(serve, pki):
    proc = serve(APP, *tls_flags(pki, "--limit-concurrency", "1"))
    with tls_connect(proc, pki) as held:
        held.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert Reader(held).response().body == b"Hello, world!"
        with tls_connect(proc, pki) as extra:
            extra.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert Reader(extra).response().status == 503
    wait_until(lambda: get(proc, pki, "/hello").status_code == 200, 3)


def test_request_then_close_notify_is_answered_then_ours(tls_server, pki):
    # TLS's half-close: the request, then the client's close_notify with
    # the TCP connection left open (Python's unwrap(), TLS 1.3 allows it).
    # As after a plain FIN, the response is written, then our close_notify.
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = client_ctx(pki)
        ctx.maximum_version = version
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as sock:
            bio_handshake(sock, obj, incoming, outgoing)
            obj.write(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
            with pytest.raises(ssl.SSLWantReadError):
                obj.unwrap()  # Queues our close_notify; the server's is read below.
            sock.sendall(outgoing.read())
            plain, closed = b"", False
            while not closed:
                data = sock.recv(65536)
                assert data, f"EOF without close_notify after {plain!r}"
                incoming.write(data)
                while True:
                    try:
                        plain += obj.read(65536)
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        closed = True
                        break
            assert plain.startswith(b"HTTP/1.1 200 "), plain
            assert plain.endswith(b"Hello, world!")
            assert sock.recv(100) == b""
