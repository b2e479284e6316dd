"""``manage.py runserver`` for projects with ``"cdaphne"`` in INSTALLED_APPS."""

from cdaphne.django.runserver import Command

__all__ = ["Command"]
