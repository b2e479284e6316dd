"""A Django project in one module (no database) for tests of Django's
ASGI handler on cdaphne: a sync view, an async view, one that sleeps."""

from __future__ import annotations

import asyncio
import time

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        SECRET_KEY="tests-only",
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def hello(request):
    return HttpResponse(b"hello")


def slow(request):
    time.sleep(0.5)
    return HttpResponse(b"slow")


async def aslow(request):
    await asyncio.sleep(0.5)
    return HttpResponse(b"aslow")


urlpatterns = [path("", hello), path("slow", slow), path("aslow", aslow)]
application = get_asgi_application()
