"""ASGI entry point: ``chatroom.asgi:application`` (HTTP: the hello view; WebSocket: the room)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatroom.settings")
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from chatroom.consumers import ChatConsumer  # noqa: E402

# BENCH_CHAT_PUBSUB=1 (the cdaphne-pubsub entry): the room on cdaphne.pubsub.
_consumer: type = ChatConsumer
if os.environ.get("BENCH_CHAT_PUBSUB") == "1":
    from chatroom.pubsub_consumers import PubSubChatConsumer

    _consumer = PubSubChatConsumer
application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": URLRouter([path("", _consumer.as_asgi())]),
    }
)
