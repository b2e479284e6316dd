"""Settings of the chat-room project: Channels with its in-memory layer, no database."""

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
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels.layers.InMemoryChannelLayer",
        "CONFIG": {"capacity": 1000, "expiry": 60},
    }
}
