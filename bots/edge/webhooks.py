"""Webhook deliveries: the payload, its Standard Webhooks signature, and the POST.

Every delivery is a JSON ``POST`` with the Standard Webhooks headers: ``webhook-id`` (the
same on every retry of one delivery, for the receiver to de-duplicate), ``webhook-timestamp``
and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` with the
subscription's secret, made by the ``standardwebhooks`` package, which also verifies it).
A subscription with an auth token sends it as ``Authorization: Bearer <token>``.

The body is thin unless the subscription asked for full data (the seeds' advice: events say
what happened and where, and the receiver fetches details through an authenticated API)::

    {"type": "notification.NotificationFailed", "timestamp": "2026-...Z",
     "data": {"subscription": "...", "channel": "event://notification/events/...",
              "subsystem": "notification", "stream": "events", "object_id": "7",
              "message_id": "...", "entry_id": "...", "cookie": "...",
              "event": {...} (full data only), "event_id"/"event_data" (realtime triggers),
              "replay": true (a replayed past event)}}
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import httpx
import orjson
from standardwebhooks import Webhook

from streamcqrs.bots.edge.subscriptions import SubscriptionView

USER_AGENT = "streamcqrs-webhooks"


class Outcome(Enum):
    """How the receiver took a delivery."""

    DELIVERED = "delivered"  # any 2xx
    GONE = "gone"  # 410: the receiver wants no more; the subscription ends
    FAILED = "failed"  # anything else, or no answer: retried


@dataclass(frozen=True, slots=True)
class Event:
    """The event a delivery is about (from the delivery queue, or read again for a replay)."""

    subsystem: str
    stream: str
    entry_id: str
    message_id: str
    type: str
    object_id: str
    at_ms: int
    channel: str
    data: dict[str, Any] | None = None
    trigger: dict[str, Any] | None = None
    replay: bool = False


def webhook_id(sid: str, generation: int, event: Event) -> str:
    """The delivery's id: one per (subscription generation, event), the same on retries."""
    seed = f"{sid}:{generation}:{event.subsystem}/{event.stream}@{event.entry_id}"
    return "msg_" + hashlib.blake2b(seed.encode(), digest_size=16).hexdigest()


def body(view: SubscriptionView, event: Event) -> bytes:
    """The JSON body of a delivery (see the module docstring)."""
    data: dict[str, Any] = {
        "subscription": view.id, "channel": event.channel, "subsystem": event.subsystem,
        "stream": event.stream, "object_id": event.object_id, "message_id": event.message_id,
        "entry_id": event.entry_id, "cookie": view.cookie,
    }  # fmt: skip
    if view.full_data and event.data is not None:
        data["event"] = event.data
    if event.trigger is not None:
        data["event_id"] = event.trigger.get("event_id", "")
        data["event_data"] = event.trigger.get("data", "")
    if event.replay:
        data["replay"] = True
    at = datetime.fromtimestamp(event.at_ms / 1000, UTC)
    return orjson.dumps({"type": event.type, "timestamp": at.isoformat(), "data": data})


def headers(view: SubscriptionView, msg_id: str, payload: bytes) -> dict[str, str]:
    """The delivery's headers: Standard Webhooks signature, content type, bearer token."""
    now = datetime.now(UTC)
    signature = Webhook(view.secret).sign(msg_id, now, payload.decode())
    out = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    if view.auth_token:
        out["authorization"] = f"Bearer {view.auth_token}"
    return out


async def post(
    http: httpx.AsyncClient, view: SubscriptionView, event: Event
) -> tuple[Outcome, str]:
    """POST one delivery; how it went, and why (for the history and the dead letter)."""
    msg_id = webhook_id(view.id, view.generation, event)
    payload = body(view, event)
    try:
        reply = await http.post(view.uri, content=payload, headers=headers(view, msg_id, payload))
    except httpx.HTTPError as exc:
        return Outcome.FAILED, f"POST {view.uri} failed: {type(exc).__name__}: {exc}"
    if 200 <= reply.status_code < 300:
        return Outcome.DELIVERED, ""
    if reply.status_code == 410:
        return Outcome.GONE, f"{view.uri} answered 410 Gone"
    return Outcome.FAILED, f"{view.uri} answered {reply.status_code}"


__all__ = ["USER_AGENT", "Event", "Outcome", "body", "headers", "post", "webhook_id"]
