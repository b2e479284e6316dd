"""URL routes of the consumers (the Django views are in urls.py)."""

from django.urls import path, re_path

from . import consumers

# Room names end up in channel-layer group names: ASCII letters, digits,
# "-" and "_", well under the layer's 100-character limit.
ROOM_RE = r"[A-Za-z0-9_-]{1,64}"

websocket_urlpatterns = [
    re_path(rf"^ws/chat/(?P<room_name>{ROOM_RE})/$", consumers.ChatConsumer.as_asgi()),
    re_path(rf"^ws/chat-sync/(?P<room_name>{ROOM_RE})/$", consumers.SyncChatConsumer.as_asgi()),
    re_path(rf"^ws/pubsub-chat/(?P<room_name>{ROOM_RE})/$", consumers.PubSubChatConsumer.as_asgi()),
    re_path(
        rf"^ws/pubsub-chat-sync/(?P<room_name>{ROOM_RE})/$",
        consumers.SyncPubSubChatConsumer.as_asgi(),
    ),
    path("ws/whoami/", consumers.WhoAmIConsumer.as_asgi()),
]

http_urlpatterns = [
    path("events/", consumers.EventsConsumer.as_asgi()),
]
