"""Test helpers: a cdaphne server in a child process, and a live-server test
case for Django Channels projects.

``CdaphneProcess`` has the interface of ``daphne.testing.DaphneProcess``;
``ChannelsLiveServerTestCase`` has the interface of
``channels.testing.ChannelsLiveServerTestCase``. A project switches its browser
tests to cdaphne by changing one import::

    from cdaphne.testing import ChannelsLiveServerTestCase

The test case is written here rather than subclassed from Channels', because
``channels.testing`` imports Daphne at import time.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import socket
import traceback
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdaphne.server import Server

__all__ = ["CdaphneProcess", "ChannelsLiveServerTestCase"]

# The child must inherit the parent's state (configured Django settings, the
# test database name), as with Daphne's process on Linux. Python 3.14 made
# "forkserver" the default there, so ask for "fork" where it exists.
if "fork" in multiprocessing.get_all_start_methods():
    _context: Any = multiprocessing.get_context("fork")
else:  # pragma: no cover - Windows, macOS without fork
    _context = multiprocessing.get_context()


def _numeric_host(host: str) -> str:
    """cdaphne binds numeric addresses; resolve names such as "localhost"."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror:
        return host
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


#: Config defaults that differ from the command line's, to behave like
#: Daphne's test process: Daphne has no lifespan (with "auto", an app that
#: answers every scope by awaiting receive() would hold startup forever), and
#: Daphne's process dies at once on terminate() (no grace period).
TESTING_DEFAULTS: dict[str, Any] = {"lifespan": "off", "graceful_timeout": 0.0}

# daphne.server.Server's keyword arguments that Config spells differently.
_DAPHNE_PROXY_KWARGS = (
    "proxy_forwarded_address_header",
    "proxy_forwarded_port_header",
    "proxy_forwarded_proto_header",
)


def config_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """Config keyword arguments for ``kwargs``, which may also use the names
    daphne.server.Server takes (as ``daphne.testing.DaphneTestingInstance``
    passes them); returns them with Daphne's ``request_buffer_size``."""
    out = dict(TESTING_DEFAULTS)
    out.update((k, v) for k, v in kwargs.items()
               if k not in _DAPHNE_PROXY_KWARGS and k != "request_buffer_size")
    address = kwargs.get("proxy_forwarded_address_header")
    if address:
        proto = kwargs.get("proxy_forwarded_proto_header")
        if proto and proto.lower() != "x-forwarded-proto":
            raise ValueError(f"proxy_forwarded_proto_header={proto!r}: cdaphne reads the "
                             "scheme from X-Forwarded-Proto (or Forwarded) only")
        out.update(proxy_headers=True, proxy_headers_host=address,
                   proxy_headers_port=kwargs.get("proxy_forwarded_port_header"))
        # Daphne believes these headers from any peer.
        out.setdefault("forwarded_allow_ips", "*")
    size = kwargs.get("request_buffer_size")
    if size is not None and size < 1:
        raise ValueError("request_buffer_size must be at least 1")
    return out, size


class _BodyChunks:
    """Hands the request body out in ``http.request`` messages of at most
    ``size`` bytes, as Daphne's ``request_buffer_size`` does."""

    def __init__(self, app: Any, size: int) -> None:
        self.app = app
        self.size = size

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = self.size
        pending: list[dict[str, Any]] = []

        async def chunked_receive() -> dict[str, Any]:
            if pending:
                return pending.pop(0)
            message = await receive()
            body = message.get("body", b"")
            if message["type"] != "http.request" or len(body) <= size:
                return message
            more = message.get("more_body", False)
            for i in range(size, len(body), size):
                pending.append({"type": "http.request", "body": body[i:i + size],
                                "more_body": more or i + size < len(body)})
            return {"type": "http.request", "body": body[:size], "more_body": True}

        await self.app(scope, chunked_receive, send)


class CdaphneProcess(_context.Process):
    """A cdaphne server for ``get_application()`` in a child process.

    The child calls ``setup()``, then ``get_application()``, binds ``host`` on
    ``port`` (0: the OS picks one), publishes the port in ``self.port.value``,
    sets ``self.ready``, and serves until it gets SIGTERM (``terminate()``);
    then it calls ``teardown()``. An exception in the child is put on
    ``self.errors`` as ``(exception, formatted traceback)``.

    ``kwargs`` are passed on to ``cdaphne.config.Config``, over
    ``TESTING_DEFAULTS`` (lifespan off, no shutdown grace period). The
    keyword arguments of ``daphne.server.Server`` that
    ``daphne.testing.DaphneTestingInstance`` passes are accepted too:
    ``request_buffer_size`` (the largest ``http.request`` body handed to the
    app) and ``proxy_forwarded_address_header``/``_port_header``/
    ``_proto_header`` (proxy headers, believed from any peer as in Daphne).
    """

    def __init__(
        self,
        host: str,
        get_application: Callable[[], Any],
        kwargs: dict[str, Any] | None = None,
        setup: Callable[[], Any] | None = None,
        teardown: Callable[[], Any] | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.get_application = get_application
        self.kwargs = kwargs or {}
        self.setup = setup
        self.teardown = teardown
        self.port = _context.Value("i", port if port is not None else 0)
        self.ready = _context.Event()
        self.errors = _context.Queue()
        self.server: Server | None = None

    def run(self) -> None:
        try:
            from cdaphne.config import Config
            from cdaphne.server import Server

            if self.setup is not None:
                self.setup()
            try:
                application = self.get_application()
                kwargs, chunk_size = config_kwargs(self.kwargs)
                if chunk_size is not None:
                    application = _BodyChunks(application, chunk_size)
                config = Config(
                    application,
                    host=_numeric_host(self.host),
                    port=self.port.value,
                    on_ready=self._on_ready,
                    **kwargs,
                )
                self.server = Server(config)
                status = self.server.run()
                if status and not self.ready.is_set():
                    # The server printed why (e.g. the port is busy) and
                    # returned instead of raising: still tell the parent.
                    raise RuntimeError(f"cdaphne exited with status {status} before listening")
            finally:
                if self.teardown is not None:
                    self.teardown()
        except BaseException as exc:
            # The parent sees the failure (and why) instead of a silent timeout.
            self.errors.put((_picklable(exc), traceback.format_exc()))
        finally:
            # Let the queue's feeder thread flush before the process exits.
            self.errors.close()
            self.errors.join_thread()

    def _on_ready(self, server: Server) -> None:
        if server.ports:
            self.port.value = server.ports[0]
        self.ready.set()


def _picklable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a RuntimeError copy."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _make_application(*, static_wrapper: Callable[[Any], Any] | None) -> Any:
    # Module-level, so that it pickles under any start method.
    from channels.routing import get_default_application

    application = get_default_application()
    if static_wrapper is not None:
        application = static_wrapper(application)
    return application


def _use_test_database() -> None:
    """In the child: point the default database at the test database."""
    from django.conf import settings
    from django.db.backends.base.creation import TEST_DATABASE_PREFIX

    database = settings.DATABASES["default"]
    test_name = database.get("TEST", {}).get("NAME")
    if not test_name:
        test_name = TEST_DATABASE_PREFIX + str(database["NAME"])
    database["NAME"] = test_name


try:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connections
    from django.test.testcases import TransactionTestCase
    from django.test.utils import modify_settings
except ImportError:  # Django is optional; CdaphneProcess works without it.
    pass
else:

    class ChannelsLiveServerTestCase(TransactionTestCase):
        """TransactionTestCase plus a live cdaphne server in a child process,
        for tests that drive a real client (Selenium, websocket-client...).

        Same attributes as Channels' class: ``host``, ``ProtocolServerProcess``,
        ``static_wrapper``, ``serve_static``, ``live_server_url``,
        ``live_server_ws_url``.
        """

        host = "localhost"
        ProtocolServerProcess: Any = CdaphneProcess
        static_wrapper: Any = ASGIStaticFilesHandler
        serve_static = True
        #: Seconds to wait for the server to listen.
        startup_timeout = 30.0

        _port: int
        _server_process: Any
        _live_server_modified_settings: Any

        @property
        def live_server_url(self) -> str:
            return f"http://{self.host}:{self._port}"

        @property
        def live_server_ws_url(self) -> str:
            return f"ws://{self.host}:{self._port}"

        @classmethod
        def setUpClass(cls) -> None:
            for connection in connections.all():
                if connection.vendor == "sqlite" and connection.is_in_memory_db():
                    raise ImproperlyConfigured(
                        "ChannelsLiveServerTestCase can not be used with in memory databases"
                    )
            super().setUpClass()
            cls._live_server_modified_settings = modify_settings(ALLOWED_HOSTS={"append": cls.host})
            cls._live_server_modified_settings.enable()
            try:
                cls._start_server()
            except BaseException:
                cls._live_server_modified_settings.disable()
                super().tearDownClass()
                raise

        @classmethod
        def _start_server(cls) -> None:
            get_application = partial(
                _make_application,
                static_wrapper=cls.static_wrapper if cls.serve_static else None,
            )
            process = cls.ProtocolServerProcess(cls.host, get_application, setup=_use_test_database)
            process.start()
            cls._server_process = process
            waited = 0.0
            while not process.ready.wait(timeout=0.5):
                waited += 0.5
                if not process.is_alive() or waited >= cls.startup_timeout:
                    process.terminate()
                    process.join()
                    detail = ""
                    if not process.errors.empty():
                        detail = ":\n" + process.errors.get(timeout=1)[1]
                    raise RuntimeError(f"The live server did not start{detail}")
            cls._port = process.port.value

        @classmethod
        def tearDownClass(cls) -> None:
            cls._server_process.terminate()
            cls._server_process.join()
            cls._live_server_modified_settings.disable()
            super().tearDownClass()
