"""A chat room on cdaphne's in-memory channel layer, for --workers tests:
each WebSocket joins the group "room" on its own new_channel().

On connect the server says "hello <pid> <channel name>".  The client says
"say <text>" (group_send to the room) or "dm <channel> <text>" (send to one
channel, maybe another worker's); whatever the layer delivers is sent on
as "<text>".
"""

from __future__ import annotations

import asyncio
import os

from cdaphne.layers import InMemoryChannelLayer

LAYER = InMemoryChannelLayer()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    channel = await LAYER.new_channel()
    await LAYER.group_add("room", channel)
    await send({"type": "websocket.send", "text": f"hello {os.getpid()} {channel}"})
    from_client = asyncio.ensure_future(receive())
    from_layer = asyncio.ensure_future(LAYER.receive(channel))
    try:
        while True:
            done, _ = await asyncio.wait({from_client, from_layer},
                                         return_when=asyncio.FIRST_COMPLETED)
            if from_layer in done:
                await send({"type": "websocket.send", "text": from_layer.result()["text"]})
                from_layer = asyncio.ensure_future(LAYER.receive(channel))
            if from_client in done:
                msg = from_client.result()
                if msg["type"] == "websocket.disconnect":
                    return
                verb, _, rest = msg["text"].partition(" ")
                if verb == "say":
                    await LAYER.group_send("room", {"type": "chat", "text": rest})
                elif verb == "dm":
                    target, _, text = rest.partition(" ")
                    await LAYER.send(target, {"type": "chat", "text": text})
                from_client = asyncio.ensure_future(receive())
    finally:
        await LAYER.group_discard("room", channel)
        for task in (from_client, from_layer):
            task.cancel()
        await asyncio.gather(from_client, from_layer, return_exceptions=True)
