"""cdaphne: an ASGI server written in C, a drop-in for Daphne."""

__version__ = "0.1.0"
