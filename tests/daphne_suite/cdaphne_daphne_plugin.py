"""pytest plugin: run Daphne's own test suite against cdaphne.

Daphne's tests start their server through ``daphne.testing.DaphneProcess``
(``DaphneTestingInstance.__enter__`` looks the name up in its module at call
time). This plugin swaps that name for a thin subclass of
``cdaphne.testing.CdaphneProcess`` before any test runs; nothing else of
Daphne's suite changes.
"""

from __future__ import annotations

import daphne.testing

from cdaphne.testing import CdaphneProcess


class DaphneProcess(CdaphneProcess):
    """``daphne.testing.DaphneProcess``, served by cdaphne.

    Daphne's response tests compare the whole header list with Daphne's
    default ``Server: daphne``; the name is a setting (``-s``), so the server
    is given Daphne's name and the rest of every header list is compared.
    """

    def __init__(self, host, get_application, kwargs=None, setup=None, teardown=None,
                 port=None):
        kwargs = {"server_name": "daphne", **(kwargs or {})}
        super().__init__(host, get_application, kwargs, setup, teardown, port)


def pytest_configure(config: object) -> None:
    daphne.testing.DaphneProcess = DaphneProcess
