"""Import "module:attr" (or Daphne's "module.attr") application paths."""

from __future__ import annotations

import importlib
import sys
from typing import Any


class ImportFromStringError(Exception):
    """The application path could not be imported; the message says why."""


def import_from_string(path: str) -> Any:
    """Import an object from "package.module:attr.sub" (Daphne also takes "package.module.attr")."""
    if "." not in sys.path and "" not in sys.path:
        # Daphne imports the app with the current directory on sys.path.
        sys.path.insert(0, ".")
    module_name, sep, attrs = path.partition(":")
    if not sep:
        module_name, _, attrs = path.rpartition(".")
    if not module_name or not attrs:
        raise ImportFromStringError(
            f'Import string "{path}" must be in format "<module>:<attribute>".'
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise ImportFromStringError(
                f'Error importing "{module_name}": {exc.__class__.__name__}: {exc}'
            ) from exc
        raise ImportFromStringError(f'Could not import module "{module_name}".') from exc
    except Exception as exc:
        raise ImportFromStringError(
            f'Error importing "{module_name}": {exc.__class__.__name__}: {exc}'
        ) from exc
    obj: Any = module
    try:
        for attr in attrs.split("."):
            obj = getattr(obj, attr)
    except AttributeError as exc:
        raise ImportFromStringError(
            f'Attribute "{attrs}" not found in module "{module_name}".'
        ) from exc
    return obj
