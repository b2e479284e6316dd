"""Every server option, its default and its validation; `Config.load()`."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._types import ActionLogger, ASGIApp, Receive, Scope, Send
from .importer import ImportFromStringError, import_from_string

logger = logging.getLogger("cdaphne")

# sizeof(sockaddr_un.sun_path) - 1 on Linux.
_UNIX_PATH_MAX = 107
# read_size's bound: 16 MiB.
_READ_SIZE_MAX = 16 << 20
# Options in seconds: finite and at most this (~31 years; the C core holds
# them as uint64 milliseconds, and NaN or inf there is undefined).
_SECONDS = ("http_timeout", "websocket_timeout", "websocket_connect_timeout", "ping_interval",
            "ping_timeout", "application_close_timeout", "timeout_keep_alive", "header_timeout",
            "body_rate_grace", "half_close_grace", "graceful_timeout", "lifespan_shutdown_timeout",
            "worker_healthcheck_timeout")
_SECONDS_MAX = 1e9
# Byte counts and rates the C core holds as uint64: exact as doubles.
_COUNTS = ("max_body_size", "max_header_size", "max_header_count", "websocket_max_message_size",
           "websocket_max_frame_size", "body_buffer_size", "write_buffer_size", "min_body_rate",
           "pubsub_max_queue", "pubsub_max_topics", "pubsub_max_inbox", "pubsub_max_inbox_bytes",
           "pubsub_redis_max_queue", "tls_read_size", "max_requests", "max_requests_jitter")
_COUNT_MAX = 1 << 53
# Options the C core holds as a C int.
_INTS = ("limit_concurrency", "backlog", "fd", "max_running_requests")
_INT_MAX = (1 << 31) - 1
# Worker processes the supervisor forks at most.
_WORKERS_MAX = 1024
# Options that must be whole numbers, and text (each may be None where its
# default is): a wrong type from the Python API is one line, not a
# TypeError from deep in the server.
_WHOLE = ("port", "fd", "workers", "max_requests", "max_requests_jitter", "verbosity",
          "backlog", "limit_concurrency", "ws_deflate_window_bits", "ws_deflate_mem_level",
          "ssl_cert_reqs", "read_size", "max_running_requests")
_TEXT = ("host", "unix_socket", "root_path", "access_log", "log_fmt", "server_name",
         "forwarded_allow_ips", "proxy_headers_host", "proxy_headers_port", "ssl_certfile",
         "ssl_keyfile", "ssl_ca_certs", "ssl_ciphers", "pubsub_redis", "lifespan")


def is_decimal(text: str) -> bool:
    """ASCII digits that int() takes (str.isdigit() also takes '²', which
    int() refuses, and int() refuses over 4300 digits)."""
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


class ConfigError(Exception):
    """A bad option: the message is one line for the user."""


@dataclass(frozen=True)
class TLSOptions:
    """How one listener speaks TLS (OpenSSL, TLS 1.2 and 1.3, ALPN http/1.1).

    uvicorn's --ssl-* flags and Daphne's `ssl:` endpoint keys map onto these.
    """

    certfile: str  # PEM: the certificate, then its chain (may hold the key)
    keyfile: str | None = None  # PEM private key; None: in certfile
    password: str | None = field(default=None, repr=False)  # the key's
    ca_certs: str | None = None  # PEM CAs that client certificates must chain to
    cert_reqs: int = 0  # client certificate: 0 none, 1 optional, 2 required (ssl.CERT_*)
    # OpenSSL cipher list for TLS 1.2; None: OpenSSL's default (ECDHE
    # with AES-GCM/ChaCha20 first), as uvicorn and Daphne (Twisted) give.
    ciphers: str | None = None
    extra_chain: str | None = None  # PEM intermediates sent after the certificate
    dh_params: str | None = None  # PEM DH parameters for DHE suites (else built in)

    def check_files(self) -> None:
        """A missing or unreadable file: one line naming it."""
        for what, path in (("certificate", self.certfile), ("private key", self.keyfile),
                           ("CA certificates", self.ca_certs),
                           ("extra certificate chain", self.extra_chain),
                           ("DH parameters", self.dh_params)):
            if path is None:
                continue
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"TLS {what} {path}: {exc.strerror}") from None

    def context(self) -> Any:
        """A new _cdaphne.TLSContext: the files are read and checked now."""
        from ._cdaphne import TLSContext

        self.check_files()
        if self.cert_reqs not in (0, 1, 2):
            raise ConfigError(f"ssl_cert_reqs must be 0 (none), 1 (optional) or 2 (required), "
                              f"not {self.cert_reqs}")
        if self.cert_reqs and self.ca_certs is None:
            raise ConfigError("ssl_cert_reqs needs ssl_ca_certs (the CAs client "
                              "certificates must chain to)")
        try:
            return TLSContext(self.certfile, self.keyfile, self.password, self.ca_certs,
                              self.cert_reqs, self.ciphers, self.extra_chain, self.dh_params)
        except ValueError as exc:
            raise ConfigError(f"TLS: {exc}") from None


@dataclass
class Bind:
    """One place to listen: TCP host/port, a unix socket path, or an inherited fd."""

    kind: str  # "tcp", "unix" or "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1
    mode: int = 0o666  # a unix socket's permissions (Twisted's default)
    tls: TLSOptions | None = None  # speak TLS on it

    def describe(self) -> str:
        if self.kind == "tcp":
            # Daphne's endpoint string: a ':' in an IPv6 address is escaped.
            host = self.host.replace(":", "\\:")
            kind = "ssl" if self.tls else "tcp"
            return f"{kind}:port={self.port}:interface={host}"
        tls = " (TLS)" if self.tls else ""
        if self.kind == "unix":
            return f"unix:{self.path}{tls}"
        return f"fd:fileno={self.fd}{tls}"


def _split_endpoint(text: str) -> list[str]:
    """Split on ':' as Twisted does: a backslash escapes the next character
    (Daphne writes IPv6 interfaces as `interface=\\:\\:1`)."""
    parts, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            i += 2
            continue
        if ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


# Each endpoint type's arguments in the order of Twisted's parser
# (twisted.internet.endpoints _parseTCP, TCP6 _parseServer, _parseUNIX,
# _parseSSL; twisted.plugins.fd_endpoint): positional ones fill them in
# this order, as there; an unknown or repeated one is Twisted's TypeError.
_ENDPOINT_ARGS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "unix": ("address", "mode", "backlog", "lockfile"),
    "fd": ("fileno", "domain"),
    "ssl": ("port", "privateKey", "certKey", "sslmethod", "interface", "backlog",
            "extraCertChain", "dhParameters"),
}


def _endpoint_args(text: str, kind: str, parts: list[str]) -> dict[str, str]:
    """The endpoint's arguments by name, as Twisted binds them."""
    names = _ENDPOINT_ARGS[kind]
    positional = [p for p in parts if "=" not in p]
    if len(positional) > len(names):
        raise ConfigError(f"endpoint {text!r}: too many arguments "
                          f"({kind}: takes {', '.join(names)})")
    args = dict(zip(names, positional, strict=False))
    for part in parts:
        if "=" not in part:
            continue
        key, value = part.split("=", 1)
        if key not in names:
            raise ConfigError(f"endpoint {text!r}: unknown key {key!r} "
                              f"({kind}: takes {', '.join(names)})")
        if key in args:
            raise ConfigError(f"endpoint {text!r}: {key} given twice")
        args[key] = value
    return args


def parse_endpoint(text: str) -> Bind:
    """Parse a Twisted-style endpoint string as Daphne's -e takes it."""
    kind, _, rest = text.partition(":")
    parts = _split_endpoint(rest) if rest else []
    if kind not in _ENDPOINT_ARGS:
        raise ConfigError(f"endpoint {text!r}: unknown endpoint type {kind!r} "
                          "(tcp, tcp6, ssl, unix, fd)")
    if kind == "ssl":
        return _parse_ssl_endpoint(text, parts)
    opts = _endpoint_args(text, kind, parts)
    if kind in ("tcp", "tcp6"):
        port = opts.get("port", "")
        if not is_decimal(port):
            raise ConfigError(f"endpoint {text!r}: needs a port, e.g. tcp:8000:interface=0.0.0.0")
        host = opts.get("interface") or ("0.0.0.0" if kind == "tcp" else "::")
        return Bind("tcp", host=host.strip("[]"), port=int(port))
    if kind == "unix":
        path = opts.get("address", "")
        if not path:
            raise ConfigError(f"endpoint {text!r}: needs a path, e.g. unix:/tmp/app.sock")
        try:
            mode = int(opts.get("mode", "666"), 8)
        except ValueError:
            raise ConfigError(f"endpoint {text!r}: mode must be octal, e.g. mode=660") from None
        return Bind("unix", path=path, mode=mode)
    fileno = opts.get("fileno", "")
    if not is_decimal(fileno):
        raise ConfigError(f"endpoint {text!r}: needs fileno=N")
    return Bind("fd", fd=int(fileno))


def _parse_ssl_endpoint(text: str, parts: list[str]) -> Bind:
    """`ssl:PORT:privateKey=key.pem:certKey=cert.pem`, as Daphne takes it (Twisted's
    defaults: privateKey=server.pem, certKey=privateKey; backlog is --backlog's)."""
    opts = _endpoint_args(text, "ssl", parts)
    if "sslmethod" in opts:
        raise ConfigError(f"endpoint {text!r}: sslmethod is not supported "
                          "(cdaphne speaks TLS 1.2 and 1.3)")
    port = opts.get("port", "")
    if not is_decimal(port):
        raise ConfigError(f"endpoint {text!r}: needs a port, e.g. "
                          "ssl:8443:privateKey=key.pem:certKey=cert.pem")
    key = opts.get("privateKey", "server.pem")
    tls = TLSOptions(certfile=opts.get("certKey", key), keyfile=key,
                     extra_chain=opts.get("extraCertChain"), dh_params=opts.get("dhParameters"))
    host = opts.get("interface") or "0.0.0.0"
    return Bind("tcp", host=host.strip("[]"), port=int(port), tls=tls)


@dataclass
class Config:
    """Server settings. Names follow Daphne's flags; uvicorn's spellings map onto them."""

    app: ASGIApp | str
    host: str | None = None
    port: int | None = None
    unix_socket: str | None = None
    fd: int | None = None
    endpoints: list[str] = field(default_factory=list)
    root_path: str = ""
    # None: on when forwarded_allow_ips is given (uvicorn reads proxy
    # headers by default: its users name the trusted proxies alone).
    proxy_headers: bool | None = None
    proxy_headers_host: str | None = None  # None: X-Forwarded-For
    proxy_headers_port: str | None = None  # None: X-Forwarded-Port
    # None: $FORWARDED_ALLOW_IPS, else 127.0.0.1 (uvicorn's); the
    # environment alone turns proxy headers on nowhere.
    forwarded_allow_ips: str | None = None
    access_log: str | None = None
    log_fmt: str = "%(asctime)-15s %(levelname)-8s %(message)s"
    verbosity: int = 1
    server_name: str | None = "cdaphne"
    http_timeout: float | None = None
    websocket_timeout: float = 86400
    websocket_connect_timeout: float = 5
    ping_interval: float = 20
    ping_timeout: float = 30
    websocket_max_message_size: int = 1 << 20
    websocket_max_frame_size: int = 1 << 20
    # permessage-deflate (RFC 7692), on by default as in uvicorn.  The LZ77
    # window (2**bits bytes) of our compressor, and of the client's when its
    # offer lets us choose (browsers' does); zlib's memLevel for ours.  Per
    # connection, made on first use: deflate 2**(bits+2) + 2**(level+9)
    # bytes, inflate 2**bits (2**15 if the client chose) + ~7 KiB.
    ws_per_message_deflate: bool = True
    ws_deflate_window_bits: int = 12
    ws_deflate_mem_level: int = 5
    application_close_timeout: float = 10
    timeout_keep_alive: float = 60
    header_timeout: float = 30
    limit_concurrency: int | None = None
    # HTTP requests whose app runs at once in one worker while the worker
    # keeps its core busy; more wait, parsed, in arrival order, and go in
    # as apps end, when the core has idled over 2 ms, or after 0.5 s of
    # waiting (csrc/admit.c).  0: no limit.  WebSockets are not counted.
    # Servers on one loop share the smallest limit among them.
    max_running_requests: int = 8
    # Linux: the loop's thread under SCHED_BATCH while thread hops are out
    # (run_in_executor, sync_to_async), when it is under the default policy;
    # the executor threads it starts meanwhile inherit it.  A thread the loop
    # wakes (a worker handed sync_to_async work, the loop woken by that
    # worker) then no longer preempts its waker on the same core only to
    # wait for the GIL the waker holds: 6.6 context switches per thread hop
    # become 2.2.  With no hop out, or none that came or went for 5 ms, the
    # loop sleeps under the default policy, so the network still wakes it at
    # once on a busy core (csrc/policy.c).
    sched_batch: bool = True
    max_body_size: int | None = None
    # Request body bytes held for an app that has not called receive() yet
    # (reading pauses beyond: TCP backpressure), and response or WebSocket
    # bytes queued for a slow client (the app's send() waits beyond, until
    # half of it has drained).
    body_buffer_size: int = 1 << 20
    write_buffer_size: int = 1 << 20
    max_header_size: int = 65536  # request head bytes on the wire (431 beyond)
    max_header_count: int = 100  # header fields in a request (431 beyond); 0: no limit
    # Minimum request body data rate (Kestrel's MinRequestBodyDataRate): while
    # the app waits in receive() for body bytes, they must arrive at this
    # many bytes/s on average once it has waited body_rate_grace seconds in
    # all; otherwise 408 (or a close once the response started).  0: no check.
    min_body_rate: float = 240
    body_rate_grace: float = 5
    # After the client's FIN (a half-close, or a departure: they look alike
    # until a write fails), the seconds an app has to start its response
    # before receive() says http.disconnect (Django then drops it).
    half_close_grace: float = 5
    lifespan: str = "auto"
    backlog: int = 2048
    graceful_timeout: float = 10
    # Seconds the app's lifespan shutdown (after the connections) has to
    # answer before it is cancelled.  uvicorn waits without bound (its
    # --timeout-graceful-shutdown covers connections only), Hypercorn 60 s
    # (shutdown_timeout); Daphne has no lifespan.
    lifespan_shutdown_timeout: float = 10
    action_logger: ActionLogger | None = None
    on_ready: Any = None
    configure_logging: bool = False
    # --workers: None serves in this process; N >= 1 runs a supervisor and N
    # worker processes (cdaphne.supervisors), each a full server.
    workers: int | None = None
    # Seconds a worker's event loop may go without a heartbeat before the
    # supervisor kills it (SIGKILL) and starts another.
    worker_healthcheck_timeout: float = 10
    # A worker that has started this many requests (plus a random 0..jitter)
    # is replaced, the new one accepting before the old one drains.
    max_requests: int | None = None
    max_requests_jitter: int = 0
    # With --workers: each worker binds its own TCP socket with SO_REUSEPORT
    # (the kernel spreads connections) instead of accepting on the one socket
    # the supervisor bound.
    reuse_port: bool = False
    # With --workers on a shared socket: a worker holding more connections
    # than another leaves the next one queued for 1 ms, for the others to
    # take (the first worker awake would otherwise accept a whole burst).
    accept_balance: bool = True
    # TLS on the host/port, unix_socket and fd binds (uvicorn's --ssl-*
    # flags; -e ssl:... endpoints carry their own).  On when ssl_certfile
    # is set; defaults as uvicorn's.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = field(default=None, repr=False)
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: int = 0  # ssl.CERT_NONE
    ssl_ciphers: str | None = None
    # Binds given as objects, listened to as they are (a supervisor's
    # workers get their inherited sockets this way).
    listen: list[Bind] = field(default_factory=list)
    # cdaphne.pubsub: bytes queued for one subscriber (plus 64 per queued
    # frame) before it is closed with 1013; 0: no bound.  Topics one
    # WebSocket may subscribe to.  A Redis URL carries published messages
    # to other servers (None: this server's workers only).
    pubsub_max_queue: int = 256 << 10
    pubsub_max_topics: int = 100
    pubsub_redis: str | None = None
    # cdaphne.pubsub.publish() from other threads: messages (and their
    # frames' bytes) waiting for the loop; publish() waits beyond either.
    # Messages waiting for the Redis connection; newer ones are dropped
    # (and counted) beyond it.  0: no bound.
    pubsub_max_inbox: int = 65536
    pubsub_max_inbox_bytes: int = 64 << 20
    pubsub_redis_max_queue: int = 65536
    # TLS ciphertext bytes read from the socket at once, all decrypted in
    # that read (plaintext: at most this plus one 16 KiB record).
    tls_read_size: int = 65536
    # Bytes read from a plain (not TLS) socket at once (1..16 MiB: one read
    # returns at most what the socket's receive buffer holds, 6 MiB at
    # Linux's default tcp_rmem maximum).
    read_size: int = 65536
    loaded_app: ASGIApp | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.proxy_headers is None:
            self.proxy_headers = self.forwarded_allow_ips is not None
        if self.forwarded_allow_ips is None:
            self.forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

    def binds(self) -> list[Bind]:
        """Where to listen, Daphne's way: endpoints, plus host/port/socket/fd if given."""
        binds = [parse_endpoint(e) for e in self.endpoints]
        binds += [dataclasses.replace(b) for b in self.listen]
        tls = self.tls_options()
        if self.unix_socket == "":
            raise ConfigError("unix socket path is empty (-u/--uds)")
        if self.unix_socket:
            binds.append(Bind("unix", path=self.unix_socket, tls=tls))
        if self.fd is not None:
            binds.append(Bind("fd", fd=self.fd, tls=tls))
        if self.host is not None or self.port is not None or not binds:
            host = self.host if self.host is not None else "127.0.0.1"
            port = self.port if self.port is not None else 8000
            binds.append(Bind("tcp", host=host, port=port, tls=tls))
        for b in binds:
            if b.kind == "tcp":
                b.host = resolve_host(b.host)
                if not 0 <= b.port <= 65535:
                    raise ConfigError(f"port {b.port} is out of range")
            elif b.kind == "unix" and len(os.fsencode(b.path)) > _UNIX_PATH_MAX:
                # libuv would bind a silently truncated path.
                raise ConfigError(f"unix socket path {b.path!r} is too long "
                                  f"({len(os.fsencode(b.path))} bytes, at most {_UNIX_PATH_MAX})")
        return binds

    def tls_options(self) -> TLSOptions | None:
        """The --ssl-* flags as TLSOptions, or None when TLS is off."""
        flags = (self.ssl_keyfile, self.ssl_keyfile_password, self.ssl_ca_certs, self.ssl_ciphers)
        if self.ssl_certfile is None:
            if any(f is not None for f in flags) or self.ssl_cert_reqs:
                raise ConfigError("TLS needs ssl_certfile (--ssl-certfile)")
            return None
        return TLSOptions(certfile=self.ssl_certfile, keyfile=self.ssl_keyfile,
                          password=self.ssl_keyfile_password, ca_certs=self.ssl_ca_certs,
                          cert_reqs=self.ssl_cert_reqs, ciphers=self.ssl_ciphers)

    def check_tls(self, binds: list[Bind] | None = None) -> None:
        """Loads every TLS context once: a bad or missing key or certificate
        fails here, at startup, with one line."""
        for b in self.binds() if binds is None else binds:
            if b.tls is not None:
                b.tls.context()

    def _validate_numbers(self) -> None:
        """Every number within what the core can hold: one line otherwise."""
        for name in _WHOLE:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{name} must be a whole number, not {value!r}")
        for name in _TEXT:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string, not {value!r}")
        for name in (*_SECONDS, *_COUNTS, *_INTS):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number, not {value!r}")
            if name in _SECONDS and not -_SECONDS_MAX <= value <= _SECONDS_MAX:
                raise ConfigError(f"{name} must be a finite number of seconds, "
                                  f"at most {_SECONDS_MAX:.0f}, not {value}")
            if name in _COUNTS and not value <= _COUNT_MAX:
                raise ConfigError(f"{name} must be at most {_COUNT_MAX}, not {value}")
            if name in _INTS and not value <= _INT_MAX:
                raise ConfigError(f"{name} must be at most {_INT_MAX}, not {value}")
        for name in (*_SECONDS, "limit_concurrency", "backlog", "max_running_requests"):
            value = getattr(self, name)
            # Read as 0 (off) by the core, while Python waited 0 s: say so.
            # websocket_timeout's -1 is Daphne's "no limit".
            if value is not None and value < 0 and name != "websocket_timeout":
                raise ConfigError(f"{name} must not be negative, not {value}")
        if not 0 <= self.verbosity <= 3:
            raise ConfigError(f"verbosity must be 0..3, not {self.verbosity}")
        if self.fd is not None and self.fd < 0:
            raise ConfigError(f"fd must not be negative, not {self.fd}")

    def validate(self) -> None:
        self._validate_numbers()
        if self.lifespan not in ("auto", "on", "off"):
            raise ConfigError(f"lifespan must be auto, on or off, not {self.lifespan!r}")
        for name in ("websocket_max_message_size", "websocket_max_frame_size", "max_header_size",
                     "max_header_count", "min_body_rate", "body_rate_grace", "half_close_grace",
                     "pubsub_max_queue", "pubsub_max_topics", "pubsub_max_inbox",
                     "pubsub_max_inbox_bytes", "pubsub_redis_max_queue"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if not 9 <= self.ws_deflate_window_bits <= 15:
            raise ConfigError("ws_deflate_window_bits must be 9..15, "
                              f"not {self.ws_deflate_window_bits}")
        if not 1 <= self.ws_deflate_mem_level <= 9:
            raise ConfigError(f"ws_deflate_mem_level must be 1..9, not {self.ws_deflate_mem_level}")
        for name in ("header_timeout", "timeout_keep_alive", "body_buffer_size", "max_header_size",
                     "write_buffer_size", "tls_read_size"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        if not 1 <= self.read_size <= _READ_SIZE_MAX:
            raise ConfigError(f"read_size must be 1..{_READ_SIZE_MAX} bytes, not {self.read_size}")
        if self.workers is not None and not 1 <= self.workers <= _WORKERS_MAX:
            # A typo (an extra digit, a pasted number) forked until the
            # machine ran out of processes.
            raise ConfigError(f"workers must be at least 1 and at most {_WORKERS_MAX}, "
                              f"not {self.workers}")
        if not self.worker_healthcheck_timeout > 0:
            raise ConfigError("worker_healthcheck_timeout must be positive")
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"max_requests must be at least 1, not {self.max_requests}")
        if self.max_requests_jitter < 0:
            raise ConfigError("max_requests_jitter must not be negative")
        if self.server_name is not None and any(
                (c < " " and c != "\t") or c == "\x7f" for c in self.server_name):
            # It went out as written: "x\r\nX-Evil: 1" added a header line.
            raise ConfigError(f"server_name {self.server_name!r}: no control characters "
                              "(CR, LF, NUL...) may go in the Server header")
        if self.configure_logging:
            # A bad one logged a "--- Logging error ---" traceback per line.
            try:
                logging.Formatter(self.log_fmt).format(logging.makeLogRecord({"msg": "x"}))
            except (KeyError, ValueError, TypeError) as exc:
                raise ConfigError(f"log_fmt {self.log_fmt!r}: {exc}") from None
        if self.workers is None and (self.max_requests is not None or self.reuse_port):
            flag = "max_requests" if self.max_requests is not None else "reuse_port"
            raise ConfigError(f"{flag} needs workers (--workers N)")
        if self.workers is not None and self.access_log not in (None, "-"):
            # Each worker opens it: say once here that it cannot be.
            try:
                with open(self.access_log, "a"):
                    pass
            except OSError as exc:
                raise ConfigError(f"access log {self.access_log}: {exc.strerror}") from None
        if self.proxy_headers:
            # Here, not only in load(): a supervisor (--workers) never loads.
            from .proxy import TrustedHosts

            try:
                TrustedHosts(self.forwarded_allow_ips)  # type: ignore[arg-type]  # set by __post_init__
            except ValueError as exc:
                raise ConfigError(f"forwarded_allow_ips: {exc}") from None
        if self.workers is not None and not isinstance(self.app, str):
            raise ConfigError("workers need the application as an import string "
                              "(module:attr), which each worker imports")

    def load(self) -> ASGIApp:
        """Import the app (if given as a string) and adapt ASGI 2 apps to ASGI 3."""
        self.validate()
        app: Any = self.app
        if isinstance(app, str):
            try:
                app = import_from_string(app)
            except ImportFromStringError as exc:
                raise ConfigError(str(exc)) from exc
        if not callable(app):
            raise ConfigError(f"{self.app!r} is not callable: it is not an ASGI application")
        if not is_asgi3(app):
            app = ASGI2Adapter(app)
        if self.proxy_headers:
            from .proxy import wrap

            try:
                app = wrap(app, self)
            except ValueError as exc:
                raise ConfigError(f"forwarded_allow_ips: {exc}") from exc
        self.loaded_app = app
        return app


def workers_from_env(environ: Mapping[str, str] = os.environ) -> int | None:
    """The default of --workers: WEB_CONCURRENCY if set, else None (one process)."""
    text = environ.get("WEB_CONCURRENCY", "").strip()
    if not text:
        return None
    if not is_decimal(text) or not 1 <= int(text) <= _WORKERS_MAX:
        raise ConfigError(f"WEB_CONCURRENCY must be an integer 1..{_WORKERS_MAX}, not {text!r}")
    return int(text)


def is_asgi3(app: Any) -> bool:
    """Single-callable (ASGI 3) or not, as asgiref's is_double_callable (Daphne)
    decides: its hints first, then __call__, then the object itself (a
    functools.partial of an async function is ASGI 3)."""
    if getattr(app, "_asgi_single_callable", False):
        return True
    if getattr(app, "_asgi_double_callable", False):
        return False
    if inspect.isclass(app):
        return hasattr(app, "__await__")
    call = getattr(app, "__call__", None)  # noqa: B004 - instances, not only functions
    if call is not None and _is_coroutine_function(call):
        return True
    return _is_coroutine_function(app)


def _is_coroutine_function(obj: Any) -> bool:
    # inspect's sees through partials and markcoroutinefunction; asyncio's
    # marker is what asgiref.sync.markcoroutinefunction sets before 3.12.
    marker = getattr(asyncio.coroutines, "_is_coroutine", None)
    return inspect.iscoroutinefunction(obj) or (
        marker is not None and getattr(obj, "_is_coroutine", None) is marker
    )


class ASGI2Adapter:
    """Runs a double-callable (ASGI 2) application as ASGI 3."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        instance = self.app(scope)
        await instance(receive, send)


def resolve_host(host: str) -> str:
    """A numeric address for host: names such as "localhost" are resolved once."""
    host = host.strip("[]")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return host
        except OSError:
            pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve host {host!r}: {exc.strerror}") from exc
    return str(infos[0][4][0])


def configure_logging(config: Config) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(config.verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format=config.log_fmt, stream=sys.stderr)
    logging.getLogger("cdaphne").setLevel(level)
