"""The receiving side: turn a signed delivery's cookie into an operation (MDriven's
ReceiveEvent turning its cookie into a SysAsyncTicket).

>>> def work(delivery: Delivery) -> Operation | None:
...     fields = delivery.fields()        # "Viewmodel=Pdf&RootId=7" -> {"Viewmodel": "Pdf", ...}
...     if fields.get("Viewmodel") != "Pdf":
...         return None
...     return RenderPdf(root_id=int(fields["RootId"]))
>>> receiver = cookie_receiver(Client(pdf_subsystem), work, secret=made.secret)
$ uvicorn mymodule:receiver

Each POST is verified against the subscription's Standard Webhooks secret (401 if it does
not verify), and the operation is executed with the delivery's ``webhook-id`` as its
idempotency key: a delivery retried by the relay makes one operation, not two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from streamcqrs.domain.messages import Message
from streamcqrs.streams.client import Client


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a webhook delivery said: its id, the event's type and ids, the cookie."""

    id: str
    type: str
    cookie: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        """A realtime trigger's event id ("" for other events)."""
        return str(self.data.get("event_id", ""))

    @property
    def event_data(self) -> str:
        """A realtime trigger's data."""
        return str(self.data.get("event_data", ""))

    def fields(self) -> dict[str, str]:
        """The cookie read as ``name=value&...`` (MDriven's ``Viewmodel=X&RootId=7``)."""
        return dict(parse_qsl(self.cookie, keep_blank_values=True))


def cookie_receiver(
    client: Client,
    make: Callable[[Delivery], Message | None],
    *,
    secret: str | Callable[[], str],
    path: str = "/",
) -> FastAPI:
    """An ASGI app taking deliveries at ``path``: verify, build an operation, execute it.

    ``make`` returns the operation a delivery asks for, or None to take it without one
    (answered 204). ``secret`` is the subscription's signing secret (or a function giving it,
    for a secret that rotates).
    """
    api = FastAPI(title="webhook receiver")

    @api.post(path)
    async def receive(request: Request) -> Response:
        """One delivery: 202 with the operation's tracking id, 204 if none, 401 if forged."""
        raw = await request.body()
        key = secret() if callable(secret) else secret
        try:
            payload = Webhook(key).verify(raw, dict(request.headers))
        except WebhookVerificationError as exc:
            return JSONResponse({"detail": f"signature does not verify: {exc}"}, status_code=401)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            return JSONResponse({"detail": "not a delivery: no data object"}, status_code=422)
        delivery = Delivery(request.headers["webhook-id"], str(payload.get("type", "")),
                            str(data.get("cookie", "")), data)  # fmt: skip
        op = make(delivery)
        if op is None:
            return Response(status_code=204)
        tracking_id = await client.execute(op, idempotency_key=delivery.id)
        return JSONResponse({"tracking_id": tracking_id}, status_code=202)

    return api


__all__ = ["Delivery", "cookie_receiver"]
