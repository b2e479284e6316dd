"""Settings of the chat-room project: an in-memory channel layer, no database.

BENCH_CHANNEL_LAYER picks the layer class: Channels' InMemoryChannelLayer by
default, cdaphne.layers.InMemoryChannelLayer for the "cdaphne-layer" entry, and
channels_redis.core.RedisChannelLayer (on BENCH_REDIS_URL, with the key prefix
BENCH_REDIS_PREFIX so servers sharing one redis-server never share a room) for the
--workers entries of the peers.
"""

import os

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djhello.urls"
INSTALLED_APPS = ["channels"]
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
LOGGING_CONFIG = None
ASGI_APPLICATION = "chatroom.asgi.application"
# One process: the in-memory layer is the right one. Capacity above the room size so
# that a broadcast never drops a message for a slow member.
_BACKEND = os.environ.get("BENCH_CHANNEL_LAYER", "channels.layers.InMemoryChannelLayer")
_CONFIG: dict[str, object] = {"capacity": 1000, "expiry": 60}
if _BACKEND.startswith("channels_redis."):
    _CONFIG["hosts"] = [os.environ["BENCH_REDIS_URL"]]
    _CONFIG["prefix"] = os.environ.get("BENCH_REDIS_PREFIX", "asgi")
CHANNEL_LAYERS = {"default": {"BACKEND": _BACKEND, "CONFIG": _CONFIG}}
