"""`--workers N`: a supervisor process and N worker processes.

The supervisor binds every endpoint once and the workers inherit the
listening sockets (uvicorn's shape); see multiprocess.py for the signals and
worker.py for the worker's side of the control socket.
"""

from __future__ import annotations

from .multiprocess import Supervisor

__all__ = ["Supervisor"]
