"""Django integration: the ``cdaphne`` app (a ``runserver`` serving
``ASGI_APPLICATION`` with cdaphne, and the system check that it comes before
``django.contrib.staticfiles``).

Add ``"cdaphne"`` at the top of ``INSTALLED_APPS``. Django finds the app config
through ``cdaphne/apps.py`` and the command through
``cdaphne/management/commands/runserver.py``, two thin shims over this package:
Django looks for both relative to the package named in ``INSTALLED_APPS``.
"""
