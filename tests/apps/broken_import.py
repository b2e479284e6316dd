"""Raises on import: the CLI must report it in one line."""

raise RuntimeError("this module is broken on purpose")
