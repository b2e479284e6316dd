"""cdaphne: an ASGI server written in C, a drop-in for Daphne."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Config", "Server", "__version__", "run"]

if TYPE_CHECKING:
    from .config import Config
    from .server import Server


def __getattr__(name: str) -> Any:
    # Lazy, so that `import cdaphne` (e.g. from INSTALLED_APPS or the
    # channel layer) does not load the C core.
    if name == "Config":
        from .config import Config

        return Config
    if name == "Server":
        from .server import Server

        return Server
    if name == "run":
        from .server import run

        return run
    raise AttributeError(name)
