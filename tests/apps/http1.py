"""The general HTTP test app: one route per behaviour under test.

Side endpoints (/_report) expose what the app saw, so tests can check
things the client cannot observe (receive() results, bytes sent...).
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from .common import jsonable, query, read_body, send_json, send_text

# What the app observed, per key; read back through /_report?key=...
REPORT: dict[str, object] = {}
SENT = {"bytes": 0, "done": False}


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("http only")
    path = scope["path"]
    handler = ROUTES.get(path)
    if handler is None and path.startswith("/scope/"):
        handler = scope_view
    if handler is None:
        await send_text(send, b"not found", 404)
        return
    await handler(scope, receive, send)


async def hello(scope, receive, send):
    await send_text(send, b"Hello, world!")


async def scope_view(scope, receive, send):
    await read_body(receive)
    await send_json(send, jsonable(scope))


async def echo(scope, receive, send):
    """Reads the body; answers its size, chunk count and sha256."""
    body, count = await read_body(receive)
    await send_json(send, {"size": len(body), "messages": count,
                           "sha256": hashlib.sha256(body).hexdigest(),
                           "body": body[:64].decode("latin-1")})


async def slow(scope, receive, send):
    """Answers after ?delay= seconds with the path+query (pipelining order)."""
    q = query(scope)
    await read_body(receive)
    await asyncio.sleep(float(q.get("delay", "0")))
    await send_text(send, f"{q.get('n', '')}".encode())


async def stream(scope, receive, send):
    """?n= chunks of ?size= bytes, streamed (no Content-Length)."""
    q = query(scope)
    n, size = int(q.get("n", "3")), int(q.get("size", "5"))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for i in range(n):
        await send({"type": "http.response.body", "body": bytes([65 + i % 26]) * size,
                    "more_body": True})
        await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def content_length(scope, receive, send):
    """App-given Content-Length, body sent in two pieces."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"10")]})
    await send({"type": "http.response.body", "body": b"01234", "more_body": True})
    await send({"type": "http.response.body", "body": b"56789"})


async def empty(scope, receive, send):
    status = int(query(scope).get("status", "200"))
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def headers(scope, receive, send):
    """Response with custom headers, some duplicated; ?server= and ?date= override."""
    q = query(scope)
    hs = [(b"x-one", b"1"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
    if "server" in q:
        hs.append((b"server", q["server"].encode()))
    if "date" in q:
        hs.append((b"date", b"Thu, 01 Jan 1970 00:00:00 GMT"))
    if "close" in q:
        hs.append((b"connection", q["close"].encode()))
    await send_text(send, b"headers", headers=hs)


async def no_receive(scope, receive, send):
    """Never reads the body; holds the request open for ?hold= seconds."""
    REPORT["no_receive_started"] = time.time()
    await asyncio.sleep(float(query(scope).get("hold", "3")))
    await send_text(send, b"done")


async def respond_first(scope, receive, send):
    """Answers without reading the body."""
    await send_text(send, b"early")


async def late_receive(scope, receive, send):
    """Starts the response, then reads the body (100-continue must not follow)."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"head;", "more_body": True})
    body, _ = await read_body(receive)
    await send({"type": "http.response.body", "body": body})


async def big(scope, receive, send):
    """Streams ?mb= MiB with a Content-Length; SENT tracks progress."""
    total = int(query(scope).get("mb", "200")) << 20
    chunk = b"x" * (64 << 10)
    SENT["bytes"] = 0
    SENT["done"] = False
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(total).encode())]})
    sent = 0
    while sent < total:
        await send({"type": "http.response.body", "body": chunk,
                    "more_body": sent + len(chunk) < total})
        sent += len(chunk)
        SENT["bytes"] = sent
    SENT["done"] = True


async def progress(scope, receive, send):
    await send_json(send, SENT)


async def disconnect_after_response(scope, receive, send):
    """receive() after the body must wait for the response to finish."""
    await read_body(receive)
    waiter = asyncio.ensure_future(receive())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"part;", "more_body": True})
    await asyncio.sleep(0.3)
    REPORT["pending_while_streaming"] = not waiter.done()
    await send({"type": "http.response.body", "body": b"end"})
    try:
        msg = await asyncio.wait_for(waiter, 2)
    except TimeoutError:
        msg = {"type": "timeout"}
    REPORT["after_response"] = msg


async def disconnect_client_leaves(scope, receive, send):
    """receive() after the body must block until the client goes away."""
    await read_body(receive)
    REPORT["waiting"] = True
    t0 = time.monotonic()
    msg = await receive()
    REPORT["client_left"] = {"msg": msg, "waited": time.monotonic() - t0}
    # Sends after a disconnect are ignored (Daphne's behaviour).
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"late"})
    REPORT["late_send_ok"] = True


async def short_content_length(scope, receive, send):
    """Promises 10 bytes, sends 5 and finishes."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"10")]})
    await send({"type": "http.response.body", "body": b"01234"})


async def app_chunked(scope, receive, send):
    """The app names Transfer-Encoding: chunked itself; the server frames it."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"transfer-encoding", b"chunked")]})
    await send({"type": "http.response.body", "body": b"abc", "more_body": True})
    await send({"type": "http.response.body", "body": b"def"})


async def record_body(scope, receive, send):
    """Records every message receive() gives until the body ends or the client goes."""
    msgs = []
    REPORT["record_body"] = msgs
    while True:
        msg = await receive()
        msgs.append({"type": msg["type"], "size": len(msg.get("body", b"")),
                     "more_body": msg.get("more_body", False)})
        if msg["type"] == "http.disconnect" or not msg.get("more_body", False):
            break
    REPORT["record_body_done"] = True
    await send_text(send, b"recorded")


async def slow_reader(scope, receive, send):
    """Reads the body with pauses between messages."""
    h = hashlib.sha256()
    size = count = 0
    while True:
        msg = await receive()
        count += 1
        h.update(msg.get("body", b""))
        size += len(msg.get("body", b""))
        await asyncio.sleep(0.01)
        if not msg.get("more_body"):
            break
    await send_json(send, {"size": size, "messages": count, "sha256": h.hexdigest()})


async def started_then_sleep(scope, receive, send):
    """Starts a streamed response, then stalls for ?s= seconds."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"started;", "more_body": True})
    await asyncio.sleep(float(query(scope).get("s", "3")))
    await send({"type": "http.response.body", "body": b"late"})


async def respond_then_receive(scope, receive, send):
    """Answers before the body arrived, then receive()s until http.disconnect."""
    await send_text(send, b"answered")
    msgs = []
    REPORT["rtr"] = msgs
    try:
        async with asyncio.timeout(3):
            while True:
                msg = await receive()
                msgs.append(msg["type"])
                if msg["type"] == "http.disconnect":
                    break
    except TimeoutError:
        msgs.append("timeout")
    REPORT["rtr_done"] = True


async def cpu_then_sleep(scope, receive, send):
    """Busy for 50 ms, then a short asyncio timer (must fire on time)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.05:
        pass
    t1 = time.monotonic()
    await asyncio.sleep(0.01)
    await send_json(send, {"slept": time.monotonic() - t1})


async def block(scope, receive, send):
    """Blocks the loop for ?s= seconds (bad app code), then answers."""
    time.sleep(float(query(scope).get("s", "1")))
    await send_text(send, b"unblocked")


async def report(scope, receive, send):
    key = query(scope).get("key")
    await send_json(send, {"present": key in REPORT, "value": jsonable(REPORT.get(key))})


async def clear(scope, receive, send):
    REPORT.clear()
    await send_text(send, b"ok")


ROUTES = {
    "/": hello,
    "/hello": hello,
    "/scope": scope_view,
    "/echo": echo,
    "/slow": slow,
    "/stream": stream,
    "/cl": content_length,
    "/empty": empty,
    "/headers": headers,
    "/noreceive": no_receive,
    "/respond_first": respond_first,
    "/late_receive": late_receive,
    "/big": big,
    "/progress": progress,
    "/disc_response": disconnect_after_response,
    "/disc_client": disconnect_client_leaves,
    "/short_cl": short_content_length,
    "/app_chunked": app_chunked,
    "/record_body": record_body,
    "/slow_reader": slow_reader,
    "/started_then_sleep": started_then_sleep,
    "/respond_then_receive": respond_then_receive,
    "/cpu_then_sleep": cpu_then_sleep,
    "/block": block,
    "/_report": report,
    "/_clear": clear,
}
