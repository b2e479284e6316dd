"""A WebSocket app whose big sends are cancelled while they wait for the
output to drain (the fuzz finding in tests/test_fuzz_harness.py)."""

from __future__ import annotations

import asyncio

SIZE = 1044480  # 255 << 12, as the fuzz harness sends.


async def app(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    for i in range(6):
        try:
            await asyncio.wait_for(send({"type": "websocket.send", "bytes": b"y" * SIZE}), 0)
        except TimeoutError:
            pass
        await send({"type": "websocket.send", "text": f"t{i}"})
    await send({"type": "websocket.close", "code": 1000})
    while (await receive())["type"] != "websocket.disconnect":
        pass
