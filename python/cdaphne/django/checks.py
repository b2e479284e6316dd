"""System check: ``cdaphne`` must come before ``django.contrib.staticfiles``.

Django uses the ``runserver`` of the first installed app that has one; if
staticfiles comes first, ``manage.py runserver`` silently runs Django's WSGI
server, without WebSocket.
"""

from typing import Any

from django.core.checks import CheckMessage, Error

E001 = "cdaphne.E001"


def _entry(installed_apps: list[str], fallback: str, match: Any) -> str:
    """The INSTALLED_APPS entry as the user wrote it, for the message."""
    for entry in installed_apps:
        if match(entry):
            return entry
    return fallback


def check_cdaphne_before_staticfiles(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from django.apps import apps
    from django.conf import settings
    from django.contrib.staticfiles.apps import StaticFilesConfig

    from .apps import CdaphneConfig

    for app_config in apps.get_app_configs():
        if isinstance(app_config, CdaphneConfig):
            return []
        if isinstance(app_config, StaticFilesConfig):
            installed = [a for a in settings.INSTALLED_APPS if isinstance(a, str)]
            ours = _entry(installed, "cdaphne", lambda a: a.split(".")[0] == "cdaphne")
            theirs = _entry(installed, "django.contrib.staticfiles", lambda a: "staticfiles" in a)
            return [
                Error(
                    f"{ours!r} must be listed before {theirs!r} in INSTALLED_APPS.",
                    hint=(
                        f"Move {ours!r} above {theirs!r} in INSTALLED_APPS (first is "
                        "best): the runserver of the app listed first wins, so "
                        "runserver currently starts Django's WSGI server instead of "
                        "cdaphne."
                    ),
                    id=E001,
                )
            ]
    return []
