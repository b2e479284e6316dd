"""`--workers N`: a supervisor process and N worker processes.

The supervisor binds every endpoint once and the workers inherit the
listening sockets (uvicorn's shape); see multiprocess.py for the signals,
worker.py for the worker's side of the control socket and bus.py for the
channel layer's link between workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Supervisor"]

if TYPE_CHECKING:
    from .multiprocess import Supervisor


def __getattr__(name: str) -> Any:
    # Lazy: cdaphne.layers imports .bus, which must not load the C server.
    if name == "Supervisor":
        from .multiprocess import Supervisor

        return Supervisor
    raise AttributeError(name)
