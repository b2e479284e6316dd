"""``runserver`` that serves ``ASGI_APPLICATION`` with cdaphne, in-process.

It keeps what Django's command does (autoreloader, system checks, the
unapplied-migrations warning, static files in DEBUG or with ``--insecure``,
``--nostatic``, ``--ipv6``, ``addr:port`` forms) and behaves like Daphne's
(``--noasgi``, ``FORCE_SCRIPT_NAME`` as root_path, the access log on the
``django.channels.server`` logger).
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn

from django.apps import apps
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.contrib.staticfiles.management.commands.runserver import (
    Command as StaticfilesRunserverCommand,
)
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError, CommandParser
from django.core.servers.basehttp import get_internal_wsgi_application
from django.db import connections
from django.utils import autoreload

import cdaphne

logger = logging.getLogger("django.channels.server")

ASGIApp = Callable[..., Any]

# Django's own wording for the usual bind errors.
BIND_ERRORS = {
    errno.EACCES: "You don't have permission to access that port.",
    errno.EADDRINUSE: "That port is already in use.",
    errno.EADDRNOTAVAIL: "That IP address can't be assigned to.",
}


def get_default_application() -> ASGIApp:
    """The application named by the ASGI_APPLICATION setting.

    Raises ImproperlyConfigured with a one-line message naming the setting and
    what went wrong; the original exception is chained.
    """
    value = getattr(settings, "ASGI_APPLICATION", None)
    if not value or not isinstance(value, str):
        raise ImproperlyConfigured(
            "You have not set ASGI_APPLICATION, which is needed to run the server."
        )
    module_path, _, attr = value.rpartition(".")
    if not module_path:
        raise ImproperlyConfigured(
            f"ASGI_APPLICATION {value!r} is not a dotted path such as 'project.asgi.application'."
        )
    try:
        module = importlib.import_module(module_path)
    except Exception as exc:
        raise ImproperlyConfigured(
            f"Cannot import ASGI_APPLICATION module {module_path!r}: {_describe(exc)}"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImproperlyConfigured(
            f"Cannot find {attr!r} in ASGI_APPLICATION module {module_path!r}."
        ) from None


def _describe(exc: BaseException) -> str:
    """``Type: message (file, line N)`` for an import-time exception."""
    if isinstance(exc, ModuleNotFoundError):
        return str(exc)
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}, line {exc.lineno})"
        text = exc.msg
    else:
        text = str(exc)
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            where = f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return f"{type(exc).__name__}: {text}{where}"


def _failing_file(exc: BaseException) -> str | None:
    """The file to watch so that fixing it reloads, as autoreload.check_errors
    does; but skip importlib's frozen frames, so that a failed ``import x``
    points at the module that holds it (it is not in sys.modules)."""
    filename = getattr(exc, "filename", None)
    if isinstance(filename, str) and os.path.isfile(filename):
        return filename
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if os.path.isfile(frame.filename):
            return frame.filename
    return None


def resolve_host(addr: str, port: int, ipv6: bool) -> str:
    """A numeric address to bind for what the user typed ("0", a name, an IP)."""
    if addr == "0":
        return "0.0.0.0"
    family = socket.AF_INET6 if ipv6 else socket.AF_UNSPEC
    try:
        infos = socket.getaddrinfo(addr, port, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CommandError(f"Cannot resolve address {addr!r}: {exc.strerror}") from None
    # Prefer IPv4 for names such as "localhost", like Django's WSGI server.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


def check_bindable(host: str, port: int) -> None:
    """Raise the OSError that binding host:port would raise now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the server does: a port in TIME_WAIT is fine, a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


class Command(StaticfilesRunserverCommand):
    help = (
        "Starts a lightweight development server for the project's ASGI_APPLICATION "
        "(HTTP and WebSocket) with cdaphne, and serves static files in DEBUG."
    )
    server_version = cdaphne.__version__

    # Set by Django's handle() from the addrport argument.
    addr: str
    port: str
    use_ipv6: bool
    _raw_ipv6: bool

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--noasgi",
            action="store_false",
            dest="use_asgi",
            help="Run Django's WSGI development server instead of cdaphne (no WebSocket).",
        )
        parser.add_argument(
            "--http_timeout",
            "--http-timeout",
            type=int,
            dest="http_timeout",
            default=None,
            help="Seconds before an unfinished HTTP response is cut (default: no timeout).",
        )
        parser.add_argument(
            "--websocket_handshake_timeout",
            "--websocket-handshake-timeout",
            type=int,
            dest="websocket_handshake_timeout",
            default=5,
            help="Seconds the application has to accept or reject a WebSocket (default: 5).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["use_asgi"] and not getattr(settings, "ASGI_APPLICATION", None):
            raise CommandError(
                "You have not set ASGI_APPLICATION, which is needed to run the server."
            )
        super().handle(*args, **options)

    def get_handler(self, *args: Any, **options: Any) -> Any:
        """The WSGI handler of ``--noasgi`` (static files only with staticfiles)."""
        if apps.is_installed("django.contrib.staticfiles"):
            return super().get_handler(*args, **options)
        return get_internal_wsgi_application()

    def get_application(self, options: dict[str, Any]) -> ASGIApp:
        """ASGI_APPLICATION, wrapped to serve static files when Django's would."""
        application = get_default_application()
        use_static_handler = options.get("use_static_handler", True)
        insecure_serving = options.get("insecure_serving", False)
        if (
            apps.is_installed("django.contrib.staticfiles")
            and use_static_handler
            and (settings.DEBUG or insecure_serving)
        ):
            return ASGIStaticFilesHandler(application)
        return application

    def inner_run(self, *args: Any, **options: Any) -> None:
        if not options.get("use_asgi", True):
            super().inner_run(*args, **options)
            return
        # An exception silenced in the reloader's parent is raised again here.
        autoreload.raise_last_exception()
        use_reloader = bool(options.get("use_reloader"))

        if not options.get("skip_checks"):
            self.stdout.write("Performing system checks...\n\n")
            self.check(display_num_errors=True)
        self.check_migrations()
        for conn in connections.all(initialized_only=True):
            conn.close()

        try:
            application = self.get_application(options)
        except ImproperlyConfigured as exc:
            if not use_reloader:
                raise CommandError(str(exc)) from exc
            # Under the reloader, say it in one line and keep watching files:
            # fixing the module restarts the server, as with Django's server.
            cause = exc.__cause__
            filename = _failing_file(cause) if cause is not None else None
            error_files: list[str] = getattr(autoreload, "_error_files", [])
            if filename and filename not in error_files:
                error_files.append(filename)
            self.stderr.write(f"Error: {exc}")
            self.stderr.write("Waiting for a file change to restart the server.")
            self.stderr.flush()
            return

        port = int(self.port)
        try:
            host = resolve_host(self.addr, port, self.use_ipv6)
        except CommandError as exc:
            self._exit_with_error(str(exc))
        self._run_server(application, host, port, options)

    def _run_server(
        self, application: ASGIApp, host: str, port: int, options: dict[str, Any]
    ) -> None:
        from cdaphne.config import Config
        from cdaphne.server import Server

        config = Config(
            application,
            host=host,
            port=port,
            root_path=getattr(settings, "FORCE_SCRIPT_NAME", "") or "",
            action_logger=self.log_action,
            on_ready=self.on_ready,
            http_timeout=options.get("http_timeout"),
            websocket_connect_timeout=options.get("websocket_handshake_timeout", 5),
            # A development server restarts often: close open WebSockets
            # (1012, service restart) after one second, not ten.
            graceful_timeout=1.0,
        )
        if port:
            # The server reports a bind failure as a startup error; check first
            # so that the user gets Django's wording for the usual causes.
            try:
                check_bindable(host, port)
            except OSError as exc:
                self._exit_with_error(BIND_ERRORS.get(exc.errno or 0, str(exc)))
        done = threading.Event()
        server = Server(config)
        if options.get("use_reloader"):
            # Stop serving before the reloader replaces this process, so open
            # WebSockets are closed as a restart (1012) rather than cut.
            def stop_before_reload(sender: Any, file_path: Any, **kwargs: Any) -> None:
                server.request_stop()
                done.wait(5.0)

            autoreload.file_changed.connect(stop_before_reload, weak=False)
        logger.debug("cdaphne running, listening on %s:%s", host, port)
        try:
            exit_code = server.run()
        except OSError as exc:
            self._exit_with_error(BIND_ERRORS.get(exc.errno or 0, str(exc)))
        except KeyboardInterrupt:
            exit_code = 0
        finally:
            done.set()
        logger.debug("cdaphne exited with status %s", exit_code)
        if exit_code:
            self._exit_with_error(f"cdaphne stopped with exit status {exit_code}.", exit_code)
        shutdown_message = options.get("shutdown_message", "")
        if shutdown_message:
            self.stdout.write(shutdown_message)

    def _exit_with_error(self, message: str, status: int = 1) -> NoReturn:
        """Django's way: one line on stderr, then exit the whole process
        (``sys.exit`` would only end the reloader's server thread)."""
        self.stderr.write(f"Error: {message}")
        self.stderr.flush()
        sys.stdout.flush()
        os._exit(status)

    def on_ready(self, server: Any) -> None:
        """Print the banner once listening, with the port really bound."""
        ports = getattr(server, "ports", None) or [self.port]
        quit_command = "CTRL-BREAK" if sys.platform == "win32" else "CONTROL-C"
        if self._raw_ipv6:
            addr = f"[{self.addr}]"
        elif self.addr == "0":
            addr = "0.0.0.0"
        else:
            addr = self.addr
        now = datetime.now().strftime("%B %d, %Y - %X")
        self.stdout.write(
            f"{now}\n"
            f"Django version {self.get_version()}, using settings {settings.SETTINGS_MODULE!r}\n"
            f"Starting ASGI/cdaphne version {self.server_version} development server"
            f" at {self.protocol}://{addr}:{ports[0]}/\n"
            f"Quit the server with {quit_command}."
        )
        self.stdout.flush()

    def log_action(self, protocol: str, action: str, details: dict[str, Any]) -> None:
        """Daphne's access log lines, on the ``django.channels.server`` logger."""
        if protocol == "http" and action == "complete":
            msg = "HTTP %(method)s %(path)s %(status)s [%(time_taken).2f, %(client)s]"
            status = details["status"]
            if 200 <= status < 300:
                logger.info(self.style.HTTP_SUCCESS(msg), details)
            elif 100 <= status < 200:
                logger.info(self.style.HTTP_INFO(msg), details)
            elif status == 304:
                logger.info(self.style.HTTP_NOT_MODIFIED(msg), details)
            elif 300 <= status < 400:
                logger.info(self.style.HTTP_REDIRECT(msg), details)
            elif status == 404:
                logger.warning(self.style.HTTP_NOT_FOUND(msg), details)
            elif 400 <= status < 500:
                logger.warning(self.style.HTTP_BAD_REQUEST(msg), details)
            else:
                logger.error(self.style.HTTP_SERVER_ERROR(msg), details)
        elif protocol == "websocket":
            verb = {
                "connecting": "HANDSHAKING",
                "connected": "CONNECT",
                "disconnected": "DISCONNECT",
                "rejected": "REJECT",
            }.get(action)
            if verb is not None:
                logger.info(f"WebSocket {verb} %(path)s [%(client)s]", details)
