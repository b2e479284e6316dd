"""Application objects of unusual shapes, as asgiref (Daphne) tells them apart."""

from __future__ import annotations

import functools

from .common import send_json


async def _base(scope, receive, send, *, style: str) -> None:
    if scope["type"] != "http":
        return
    await send_json(send, {"style": style})


# A functools.partial of an async function: ASGI 3 (asyncio and inspect
# say it is a coroutine function).
partial_app = functools.partial(_base, style="partial")


class _Hinted:
    """A sync __call__ returning a coroutine, marked single-callable with
    asgiref's hint."""

    _asgi_single_callable = True

    def __call__(self, scope, receive, send):
        return _base(scope, receive, send, style="hinted")


hinted_app = _Hinted()
