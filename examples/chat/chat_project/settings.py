"""Settings of the cdaphne chat example (the Channels tutorial project).

Environment variables:

- ``CHAT_CHANNEL_LAYER``: ``memory`` (default, Channels' in-memory layer),
  ``cdaphne`` (cdaphne's in-memory layer), ``redis`` or ``redis-pubsub``
  (channels_redis, at ``REDIS_URL``).
- ``CHAT_DATABASE``: path of the SQLite database (default: ``db.sqlite3`` here).
- ``DJANGO_DEBUG``: ``0`` turns DEBUG off.
- ``DJANGO_ALLOWED_HOSTS``: comma-separated names added to ALLOWED_HOSTS.
"""

import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-only-for-the-cdaphne-chat-example"
)
DEBUG = os.environ.get("DJANGO_DEBUG", "1").lower() not in {"0", "false", "no", ""}
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"] + [
    h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h.strip()
]

INSTALLED_APPS = [
    # First, so that its runserver command wins over staticfiles' one.
    "cdaphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chat_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "chat_project.wsgi.application"
ASGI_APPLICATION = "chat_project.asgi.application"

DATABASE_PATH = Path(os.environ.get("CHAT_DATABASE") or BASE_DIR / "db.sqlite3")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATABASE_PATH,
        # A file, not SQLite's in-memory default: the live-server tests
        # (chat/tests.py) run the server in another process.
        "TEST": {"NAME": DATABASE_PATH.with_name("test_" + DATABASE_PATH.name)},
    }
}


def channel_layers(kind: str, redis_url: str) -> dict[str, Any]:
    """CHANNEL_LAYERS for one of the backends named in the module docstring."""
    backends = {
        "memory": ("channels.layers.InMemoryChannelLayer", {}),
        "cdaphne": ("cdaphne.layers.InMemoryChannelLayer", {}),
        "redis": ("channels_redis.core.RedisChannelLayer", {"hosts": [redis_url]}),
        "redis-pubsub": ("channels_redis.pubsub.RedisPubSubChannelLayer", {"hosts": [redis_url]}),
    }
    if kind not in backends:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            f"CHAT_CHANNEL_LAYER={kind!r}: expected one of {', '.join(backends)}"
        )
    backend, config = backends[kind]
    return {"default": {"BACKEND": backend, "CONFIG": config}}


CHANNEL_LAYERS = channel_layers(
    os.environ.get("CHAT_CHANNEL_LAYER", "memory"),
    os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
)

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "admin:login"

# Show the server's access log (HTTP and WebSocket lines) whatever DEBUG is.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.channels.server": {
            "handlers": ["console"],
            "level": "INFO",
            "propagate": False,
        },
    },
}
