"""What ``bench.edge`` runs in its processes: the relay, a gateway app, and a receiver.

``relay``   the webhook relay watching bench/events (``streamcqrs run bench.edge_apps:relay``)
``app``     an app whose views the gateway serves (``streamcqrs gateway bench.edge_apps:app``)
``receiver`` an ASGI webhook receiver that counts POSTs (``uvicorn bench.edge_apps:receiver``)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from streamcqrs.bots.edge.relay import relay_app
from streamcqrs.domain import Event, Operation, message
from streamcqrs.handlers import App, Context


@message("bench.Happened")
class Happened(Event):
    """An event a subscription gets."""

    n: int


@message("bench.Show")
class Show(Operation):
    """An operation whose handler shows a view (the gateway serves the bench subsystem)."""

    n: int


relay = relay_app(["bench/events"], timeout=30.0, batch=200)

app = App("bench-edge")


@app.handler(Show, stream="bench/client-ops", concern="show", writes=["bench/views"])
async def show(op: Show, ctx: Context) -> None:
    """Never run by the bench: it declares what the gateway may read."""
    ctx.put_view("bench/views", ctx.object_id, {"n": op.n})


_seen = {"count": 0, "first": 0.0, "last": 0.0}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def receiver(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every POST 200 and count it; ``GET /count`` tells how many, and when."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    body = b""
    if scope["method"] == "POST":
        now = time.monotonic()
        _seen["first"] = _seen["first"] or now
        _seen["last"] = now
        _seen["count"] += 1
    else:
        body = orjson.dumps(_seen)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
