"""The command line: Daphne's flags (plus uvicorn's spellings) into a Config."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import NoReturn

from . import __version__
from .config import Config, ConfigError, workers_from_env
from .server import Server


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not a usage wall.
        self.exit(2, f"cdaphne: error: {message} (see cdaphne --help)\n")


def _size(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


_BOOLS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}


def _bool(text: str) -> bool:
    """uvicorn's BOOL: true/false (also 1/0, yes/no, on/off)."""
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false") from None


def version_text() -> str:
    """`cdaphne --version`: cdaphne's version on the first line, then the C
    libraries it runs with and the Python running it."""
    from . import _cdaphne

    v = _cdaphne._versions()
    # wslay has no run-time version call: this is the version built against
    # (the libwslay-dev package's; wslay 1.1.1's own header says 1.0.1-DEV).
    return "\n".join([
        f"cdaphne {__version__}",
        f"libuv {v['libuv']}",
        f"llhttp {v['llhttp']}",
        f"wslay {v['wslay']}",
        v["openssl"],
        f"{platform.python_implementation()} {platform.python_version()}",
    ])


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print versions and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> NoReturn:
        print(version_text())
        parser.exit(0)


# uvicorn's --log-level as Daphne's verbosity (uvicorn's access log is at
# INFO, so warning and above silence it too).
_LOG_LEVELS = {"critical": 0, "error": 0, "warning": 0, "info": 1, "debug": 2, "trace": 2}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cdaphne", description="ASGI server written in C, a drop-in for Daphne.")
    a = p.add_argument
    a("application", help="the application to serve, as module:attr (or module.attr)")
    a("-p", "--port", type=int, default=None, help="port number to listen on (8000)")
    a("-b", "--bind", "--host", dest="host", default=None, help="address to bind to (127.0.0.1)")
    a("--websocket_timeout", "--websocket-timeout", type=float, default=Config.websocket_timeout,
      help="seconds a WebSocket may stay open; -1 for no limit")
    a("--websocket_connect_timeout", "--websocket-connect-timeout", type=float,
      default=Config.websocket_connect_timeout,
      help="seconds an app has to accept or reject a WebSocket")
    a("-u", "--unix-socket", "--uds", dest="unix_socket", default=None,
      help="bind to a unix socket path")
    a("--fd", type=int, default=None, help="serve on an inherited socket file descriptor")
    a("-e", "--endpoint", dest="endpoints", action="append", default=[],
      help="endpoint string: tcp:PORT:interface=HOST, "
           "ssl:PORT:privateKey=KEY:certKey=CERT:interface=HOST, unix:/path, fd:fileno=N "
           "(repeatable)")
    a("--ssl-certfile", default=None,
      help="serve TLS on --bind/--port, --uds and --fd with this PEM certificate (chain)")
    a("--ssl-keyfile", default=None, help="PEM private key (default: in --ssl-certfile)")
    a("--ssl-keyfile-password", default=None, help="password of an encrypted --ssl-keyfile")
    a("--ssl-ca-certs", default=None, help="PEM CA certificates client certificates must chain to")
    a("--ssl-cert-reqs", type=int, choices=(0, 1, 2), default=Config.ssl_cert_reqs,
      help="client certificate: 0 not asked for, 1 optional, 2 required (needs --ssl-ca-certs)")
    a("--ssl-ciphers", default=Config.ssl_ciphers,
      help="OpenSSL cipher list for TLS 1.2 (default: OpenSSL's; TLS 1.3 suites are "
           "OpenSSL's)")
    log = p.add_mutually_exclusive_group()
    log.add_argument("--access-log", default=None,
                     help="where to write the access log ('-' for stdout, the default "
                          "at verbosity 1 and above)")
    log.add_argument("--no-access-log", action="store_true",
                     help="write no access log (uvicorn's flag)")
    a("--log-fmt", default=Config.log_fmt, help="log format")
    a("--ping-interval", "--ws-ping-interval", type=float, default=Config.ping_interval,
      help="seconds between WebSocket keepalive pings")
    a("--ping-timeout", "--ws-ping-timeout", type=float, default=Config.ping_timeout,
      help="seconds to wait for a pong before closing")
    a("--application-close-timeout", type=float, default=Config.application_close_timeout,
      help="seconds an application may run after its client is gone")
    a("--root-path", default=Config.root_path, help="the setting for the ASGI root_path variable")
    a("--proxy-headers", action="store_true",
      help="trust X-Forwarded-For/-Proto/-Port and Forwarded from --forwarded-allow-ips")
    a("--proxy-headers-host", default=None,
      help="header carrying the client address (X-Forwarded-For; X-Real-IP is common)")
    a("--proxy-headers-port", default=None,
      help="header carrying the client port (X-Forwarded-Port)")
    a("--forwarded-allow-ips", default=None,
      help="comma-separated addresses trusted for proxy headers ('*' for all; default "
           "$FORWARDED_ALLOW_IPS or 127.0.0.1); giving it turns --proxy-headers on")
    a("-t", "--http-timeout", type=float, default=None,
      help="seconds before a response that has not started gets a 503")
    a("--websocket-max-message-size", "--ws-max-size", type=_size,
      default=Config.websocket_max_message_size,
      help="largest WebSocket message, bytes (0: unlimited)")
    a("--websocket-max-frame-size", type=_size, default=Config.websocket_max_frame_size,
      help="largest WebSocket frame, bytes (0: unlimited)")
    a("--ws-per-message-deflate", "--websocket-per-message-deflate", type=_bool,
      default=Config.ws_per_message_deflate, metavar="BOOL",
      help="answer permessage-deflate offers (true)")
    a("--ws-deflate-window-bits", type=int, default=Config.ws_deflate_window_bits,
      help="permessage-deflate LZ77 window, 2**N bytes, 9..15 (12)")
    a("--ws-deflate-mem-level", type=int, default=Config.ws_deflate_mem_level,
      help="permessage-deflate zlib memLevel of the server's compressor, 1..9 (5)")
    a("--timeout-keep-alive", type=float, default=Config.timeout_keep_alive,
      help="seconds an idle connection stays open")
    a("--header-timeout", type=float, default=Config.header_timeout,
      help="seconds a client has to send a whole request head")
    a("--limit-concurrency", type=int, default=None,
      help="connections beyond this get a 503")
    a("--max-running-requests", type=_size, default=Config.max_running_requests,
      help="HTTP requests whose app runs at once while the worker's core is busy; more "
           "wait their turn (0: no limit)")
    a("--sched-batch", type=_bool, default=Config.sched_batch, metavar="BOOL",
      help="Linux: the loop's thread under SCHED_BATCH while thread hops are out, so "
           "that it and the executor threads it wakes wait their turn instead of "
           "preempting each other (true)")
    a("--max-body-size", type=_size, default=None, help="largest request body, bytes (413 beyond)")
    a("--body-buffer-size", type=_size, default=Config.body_buffer_size,
      help="request body bytes held for an app that is not reading; reading pauses beyond")
    a("--write-buffer-size", type=_size, default=Config.write_buffer_size,
      help="response or WebSocket bytes queued for a slow client; the app's send() waits beyond")
    a("--max-header-size", type=_size, default=Config.max_header_size,
      help="largest request head as sent, request line and CRLFs included, bytes (431 beyond)")
    a("--max-header-count", type=_size, default=Config.max_header_count,
      help="most header fields in a request (431 beyond; 0: no limit)")
    a("--min-body-rate", type=_rate, default=Config.min_body_rate,
      help="bytes/s a request body must arrive at while the app waits for it, "
           "after --body-rate-grace (408 below it; 0: no minimum)")
    a("--body-rate-grace", type=_rate, default=Config.body_rate_grace,
      help="seconds the app may wait for body bytes before --min-body-rate applies")
    a("--half-close-grace", type=_rate, default=Config.half_close_grace,
      help="seconds an app has after the client's FIN (half-close) to start its response "
           "before receive() says http.disconnect")
    a("--timeout-graceful-shutdown", dest="graceful_timeout", type=float,
      default=Config.graceful_timeout,
      help="seconds in-flight requests and WebSockets get on shutdown before being closed")
    a("--timeout-lifespan-shutdown", dest="lifespan_shutdown_timeout", type=float,
      default=Config.lifespan_shutdown_timeout,
      help="seconds the app's lifespan shutdown gets, after the connections, before it is "
           "cancelled")
    a("--workers", type=int, default=None,
      help="run a supervisor and this many worker processes, 1 to 1024 (default: $WEB_CONCURRENCY, "
           "else one process and no supervisor)")
    a("--worker-healthcheck-timeout", type=float, default=Config.worker_healthcheck_timeout,
      help="seconds a worker may miss heartbeats before it is killed and replaced")
    a("--max-requests", type=int, default=None,
      help="replace a worker after this many requests (needs --workers)")
    a("--max-requests-jitter", type=_size, default=Config.max_requests_jitter,
      help="add a random 0..N to --max-requests per worker")
    a("--reuse-port", action="store_true",
      help="with --workers: each worker binds its own SO_REUSEPORT TCP socket")
    a("--no-accept-balance", dest="accept_balance", action="store_false",
      help="with --workers on a shared socket: the first worker awake accepts all queued "
           "connections (by default a busier worker leaves them to the others for 1 ms)")
    a("--pubsub-max-queue", type=_size, default=Config.pubsub_max_queue,
      help="bytes queued for a cdaphne.pubsub subscriber before it is closed with 1013 "
           "(0: no bound)")
    a("--pubsub-max-topics", type=_size, default=Config.pubsub_max_topics,
      help="cdaphne.pubsub topics one WebSocket may subscribe to")
    a("--pubsub-redis", default=None, metavar="URL",
      help="carry cdaphne.pubsub messages to other servers through Redis pub/sub "
           "(redis://host:port/db)")
    a("--pubsub-max-inbox", type=_size, default=Config.pubsub_max_inbox,
      help="cdaphne.pubsub.publish() messages from other threads waiting for the loop; "
           "publish() waits beyond (0: no bound)")
    a("--pubsub-max-inbox-bytes", type=_size, default=Config.pubsub_max_inbox_bytes,
      help="their frames' bytes; publish() waits beyond (0: no bound)")
    a("--pubsub-redis-max-queue", type=_size, default=Config.pubsub_redis_max_queue,
      help="cdaphne.pubsub messages waiting for Redis (--pubsub-redis); newer ones are "
           "dropped beyond (0: no bound)")
    a("--tls-read-size", type=_size, default=Config.tls_read_size,
      help="TLS bytes read from a socket at once, all decrypted then")
    a("--read-size", type=_size, default=Config.read_size,
      help="bytes read from a plain (not TLS) socket at once (1 to 16 MiB)")
    a("--lifespan", choices=("auto", "on", "off"), default=Config.lifespan,
      help="ASGI lifespan protocol")
    a("-v", "--verbosity", type=int, default=Config.verbosity,
      help="0 = quiet, 1 = normal (with the access log), 2 = debug, "
           "3 = debug and asyncio's debug mode")
    a("--log-level", choices=tuple(_LOG_LEVELS), default=None,
      help="uvicorn's spelling of -v: warning and above = -v 0 (no access log), "
           "info = 1, debug = 2")
    a("--backlog", type=_size, default=Config.backlog, help="listen backlog (2048)")
    a("-s", "--server-name", default=Config.server_name, help="the Server header's value")
    # One value, as in Daphne: with -s the last of the two flags wins.
    a("--no-server-name", "--no-server-header", dest="server_name", action="store_const",
      const=None, help="send no Server header")
    a("--version", action=_VersionAction)
    return p


def _access_log(args: argparse.Namespace) -> str | None:
    """Daphne's rule: stdout at verbosity 1 and above unless told otherwise."""
    if args.no_access_log:
        return None
    if args.access_log is not None:
        return args.access_log
    return "-" if args.verbosity >= 1 else None


def config_from_args(argv: list[str] | None = None) -> Config:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level is not None:
        args.verbosity = _LOG_LEVELS[args.log_level]
    # --forwarded-allow-ips turns proxy headers on (Config's default).
    proxy_headers = args.proxy_headers or args.forwarded_allow_ips is not None
    for flag in ("proxy_headers_host", "proxy_headers_port"):
        if getattr(args, flag) and not proxy_headers:
            # Daphne refuses these without --proxy-headers too.
            parser.error(f"--{flag.replace('_', '-')} needs --proxy-headers")
    return Config(
        app=args.application,
        host=args.host,
        port=args.port,
        unix_socket=args.unix_socket,
        fd=args.fd,
        endpoints=args.endpoints,
        root_path=args.root_path,
        proxy_headers=args.proxy_headers or None,  # None: Config decides
        proxy_headers_host=args.proxy_headers_host,
        proxy_headers_port=args.proxy_headers_port,
        forwarded_allow_ips=args.forwarded_allow_ips,
        access_log=_access_log(args),
        log_fmt=args.log_fmt,
        verbosity=args.verbosity,
        backlog=args.backlog,
        server_name=args.server_name,
        http_timeout=args.http_timeout,
        websocket_timeout=args.websocket_timeout,
        websocket_connect_timeout=args.websocket_connect_timeout,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        websocket_max_message_size=args.websocket_max_message_size,
        websocket_max_frame_size=args.websocket_max_frame_size,
        ws_per_message_deflate=args.ws_per_message_deflate,
        ws_deflate_window_bits=args.ws_deflate_window_bits,
        ws_deflate_mem_level=args.ws_deflate_mem_level,
        application_close_timeout=args.application_close_timeout,
        timeout_keep_alive=args.timeout_keep_alive,
        header_timeout=args.header_timeout,
        limit_concurrency=args.limit_concurrency,
        max_running_requests=args.max_running_requests,
        sched_batch=args.sched_batch,
        max_body_size=args.max_body_size,
        body_buffer_size=args.body_buffer_size,
        write_buffer_size=args.write_buffer_size,
        max_header_size=args.max_header_size,
        max_header_count=args.max_header_count,
        min_body_rate=args.min_body_rate,
        body_rate_grace=args.body_rate_grace,
        half_close_grace=args.half_close_grace,
        lifespan=args.lifespan,
        graceful_timeout=args.graceful_timeout,
        lifespan_shutdown_timeout=args.lifespan_shutdown_timeout,
        workers=args.workers if args.workers is not None else workers_from_env(),
        worker_healthcheck_timeout=args.worker_healthcheck_timeout,
        max_requests=args.max_requests,
        max_requests_jitter=args.max_requests_jitter,
        reuse_port=args.reuse_port,
        accept_balance=args.accept_balance,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        ssl_keyfile_password=args.ssl_keyfile_password,
        ssl_ca_certs=args.ssl_ca_certs,
        ssl_cert_reqs=args.ssl_cert_reqs,
        ssl_ciphers=args.ssl_ciphers,
        pubsub_max_queue=args.pubsub_max_queue,
        pubsub_max_topics=args.pubsub_max_topics,
        pubsub_redis=args.pubsub_redis,
        pubsub_max_inbox=args.pubsub_max_inbox,
        pubsub_max_inbox_bytes=args.pubsub_max_inbox_bytes,
        pubsub_redis_max_queue=args.pubsub_redis_max_queue,
        tls_read_size=args.tls_read_size,
        read_size=args.read_size,
        configure_logging=True,
    )


def main(argv: list[str] | None = None) -> NoReturn:
    try:
        config = config_from_args(argv)
        config.check_tls(config.binds())
        if config.workers is not None:
            # The supervisor never imports the app: each worker does.
            config.validate()
        else:
            config.load()
    except ConfigError as exc:
        print(f"cdaphne: error: {exc}", file=sys.stderr)
        sys.exit(1)
    if config.workers is not None:
        from .supervisors import Supervisor

        sys.exit(Supervisor(config).run())
    sys.exit(Server(config).run())
