from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

SUGGESTED_ROOMS = ["lobby", "random", "help"]


def index(request: HttpRequest) -> HttpResponse:
    """Pick a room."""
    return render(request, "chat/index.html", {"rooms": SUGGESTED_ROOMS})


def room(request: HttpRequest, room_name: str) -> HttpResponse:
    """One room: a log, an input, and the page's WebSocket to the consumer.

    ``?variant=sync`` makes the page talk to the synchronous consumer.
    """
    variant = "sync" if request.GET.get("variant") == "sync" else "async"
    return render(request, "chat/room.html", {"room_name": room_name, "variant": variant})
