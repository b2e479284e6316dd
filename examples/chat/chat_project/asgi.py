"""ASGI entry point: ``cdaphne chat_project.asgi:application``.

HTTP goes to Django, except ``/events/`` (server-sent events); WebSocket
connections go through the origin check and the session/auth middleware to
the chat consumers.

In DEBUG the application serves static files itself, so that the pages work
when the bare server runs it (``make run``), not only under ``runserver``. In
production, serve them from a proxy or with WhiteNoise after ``collectstatic``.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chat_project.settings")
# Set Django up (apps, models) before importing anything that uses models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from chat.routing import http_urlpatterns, websocket_urlpatterns  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import re_path  # noqa: E402

if settings.DEBUG:
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

application = ProtocolTypeRouter(
    {
        "http": URLRouter([*http_urlpatterns, re_path(r"", django_asgi_app)]),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
