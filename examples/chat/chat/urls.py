from django.urls import re_path

from . import views
from .routing import ROOM_RE

app_name = "chat"

urlpatterns = [
    re_path(r"^$", views.index, name="index"),
    re_path(rf"^chat/(?P<room_name>{ROOM_RE})/$", views.room, name="room"),
]
