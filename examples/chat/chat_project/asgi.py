"""ASGI entry point: ``cdaphne chat_project.asgi:application``.

HTTP goes to Django, except ``/events/`` (server-sent events); WebSocket
connections go through the origin check and the session/auth middleware to
the chat consumers.
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
from django.urls import re_path  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": URLRouter([*http_urlpatterns, re_path(r"", django_asgi_app)]),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
