"""A chat room on cdaphne's in-memory channel layer, for --workers tests:
each WebSocket joins the group "room" on its own new_channel().

On connect the server says "hello <pid> <channel name>".  The client says
"say <text>" (group_send to the room) or "dm <channel> <text>" (send to one
channel, maybe another worker's); whatever the layer delivers is sent on
as "<text>".  "try <channel> <text>" sends too and answers "sent" or
"full" (ChannelFull); "flush" calls flush() and answers "flushed".

A WebSocket on /mute makes its channel with new_channel("mute") and does not
read the layer until the client says "read": a consumer that never reads.
$WORKERS_CHAT_LAYER (JSON) holds the layer's settings (capacity, expiry...).
"""

from __future__ import annotations

import asyncio
import json
import os

from cdaphne.layers import ChannelFull, InMemoryChannelLayer

LAYER = InMemoryChannelLayer(**json.loads(os.environ.get("WORKERS_CHAT_LAYER", "{}")))


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
    mute = scope["path"] == "/mute"
    channel = await LAYER.new_channel("mute" if mute else "specific.")
    await LAYER.group_add("room", channel)
    await send({"type": "websocket.send", "text": f"hello {os.getpid()} {channel}"})
    from_client = asyncio.ensure_future(receive())
    from_layer = asyncio.ensure_future(asyncio.Event().wait() if mute else LAYER.receive(channel))
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
                elif verb == "try":
                    target, _, text = rest.partition(" ")
                    try:
                        await LAYER.send(target, {"type": "chat", "text": text})
                    except ChannelFull:
                        answer = "full"
                    else:
                        answer = "sent"
                    await send({"type": "websocket.send", "text": answer})
                elif verb == "flush":
                    await LAYER.flush()
                    await send({"type": "websocket.send", "text": "flushed"})
                elif verb == "read" and mute:
                    mute = False
                    from_layer.cancel()
                    from_layer = asyncio.ensure_future(LAYER.receive(channel))
                from_client = asyncio.ensure_future(receive())
    finally:
        await LAYER.group_discard("room", channel)
        for task in (from_client, from_layer):
            task.cancel()
        await asyncio.gather(from_client, from_layer, return_exceptions=True)
