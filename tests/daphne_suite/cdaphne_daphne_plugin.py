"""pytest plugin: run Daphne's own test suite against cdaphne.

Daphne's tests start their server through ``daphne.testing.DaphneProcess``
(``DaphneTestingInstance.__enter__`` looks the name up in its module at call
time). This plugin swaps that name for a thin subclass of
``cdaphne.testing.CdaphneProcess``. Two more adjustments, both on the test
side, each for a difference the specs allow:

- Daphne's HTTP tests send HTTP/1.1 requests without ``Host``, which RFC 9112
  section 3.2 says a server MUST answer with 400 (cdaphne does, Daphne does
  not). A request of the test client that has no ``Host`` gets
  ``Host: daphne-suite.invalid``, and that one header is taken out of the
  scope the tests see, so they check everything else as written.
- Daphne's scope tests fail on any key they do not know, and compare
  ``client`` with a list. The ASGI spec allows what cdaphne does: it adds
  ``extensions`` (``websocket.http.response`` on WebSocket scopes), a
  WebSocket scope's ``http_version`` and ``state`` (the lifespan state's
  copy, an empty dict without lifespan, as uvicorn sends), and gives
  ``client``/``server`` as tuples ("Iterable[str, int]"). The scope the
  tests see goes without those three keys, with lists.
- Daphne's response tests compare the header list with Daphne's default
  ``Server: daphne``; the name is a setting (``-s``), so the server is given
  Daphne's name.
"""

from __future__ import annotations

import http.client

import daphne.testing

from cdaphne.testing import CdaphneProcess

HOST = b"daphne-suite.invalid"


class DaphneProcess(CdaphneProcess):
    """``daphne.testing.DaphneProcess``, served by cdaphne."""

    def __init__(self, host, get_application, kwargs=None, setup=None, teardown=None,
                 port=None):
        kwargs = {"server_name": "daphne", **(kwargs or {})}
        super().__init__(host, get_application, kwargs, setup, teardown, port)


_putrequest = http.client.HTTPConnection.putrequest
_putheader = http.client.HTTPConnection.putheader
_endheaders = http.client.HTTPConnection.endheaders
_get_received = daphne.testing.DaphneTestingInstance.get_received


def putrequest(self, method, url, skip_host=False, skip_accept_encoding=False):
    self._suite_needs_host = skip_host
    return _putrequest(self, method, url, skip_host, skip_accept_encoding)


def putheader(self, header, *values):
    name = header.encode("latin-1") if isinstance(header, str) else header
    if name.lower() == b"host":
        self._suite_needs_host = False
    return _putheader(self, header, *values)


def endheaders(self, message_body=None, *, encode_chunked=False):
    if getattr(self, "_suite_needs_host", False):
        _putheader(self, "Host", HOST)
        self._suite_needs_host = False
    return _endheaders(self, message_body, encode_chunked=encode_chunked)


def get_received(self):
    scope, messages = _get_received(self)
    scope.pop("extensions", None)
    scope.pop("state", None)
    if scope.get("type") == "websocket":
        scope.pop("http_version", None)
    for key in ("client", "server"):
        if isinstance(scope.get(key), tuple):
            scope[key] = list(scope[key])
    if "headers" in scope:
        scope["headers"] = [h for h in scope["headers"] if tuple(h) != (b"host", HOST)]
    return scope, messages


def pytest_configure(config: object) -> None:
    daphne.testing.DaphneProcess = DaphneProcess
    daphne.testing.DaphneTestingInstance.get_received = get_received
    http.client.HTTPConnection.putrequest = putrequest
    http.client.HTTPConnection.putheader = putheader
    http.client.HTTPConnection.endheaders = endheaders
