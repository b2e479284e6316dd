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


class CdaphneProcess(_context.Process):  # type: ignore[misc]
    """A cdaphne server for ``get_application()`` in a child process.

    The child calls ``setup()``, then ``get_application()``, binds ``host`` on
    ``port`` (0: the OS picks one), publishes the port in ``self.port.value``,
    sets ``self.ready``, and serves until it gets SIGTERM (``terminate()``);
    then it calls ``teardown()``. An exception in the child is put on
    ``self.errors`` as ``(exception, formatted traceback)``.

    ``kwargs`` are passed on to ``cdaphne.config.Config``.
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
                config = Config(
                    application,
                    host=_numeric_host(self.host),
                    port=self.port.value,
                    on_ready=self._on_ready,
                    **self.kwargs,
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
                if connection.vendor == "sqlite" and connection.is_in_memory_db():  # type: ignore[attr-defined]
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
