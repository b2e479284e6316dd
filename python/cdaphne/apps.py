"""Lets ``"cdaphne"`` in INSTALLED_APPS find its app config (see cdaphne.django)."""

from cdaphne.django.apps import CdaphneConfig

__all__ = ["CdaphneConfig"]
