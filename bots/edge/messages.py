"""What the edge stores: subscriptions as aggregates, and each subscriber's delivery queue.

A subscription is an aggregate of the subscriptions subsystem (``Subscribed``,
``CookieReplaced``, ``Unsubscribed``); its id is derived from its owner and channel, so the
same owner subscribing to the same channel again replaces the cookie. Each subscription has a
delivery queue, a second aggregate (``<id>.q``) of ``Queued`` events: the relay's matcher
appends one per matching event in the commit that acks that event, and the aggregate's
version is the delivery's sequence number, handed out atomically by the append.

``AnyMessage`` is how the relay reads events of any type without their classes: their payload
as a plain dict (``model_extra``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import ConfigDict, Field

from streamcqrs.domain import Aggregate, Event, Message, MessageType, TypeRegistry, registry
from streamcqrs.domain.errors import UnknownMessageType

ANY_TYPE = "streamcqrs.edge.AnyMessage"
END_SUBSCRIPTION = "endsubscription"
"""A cookie that ends the subscription (as MDriven's RealtimeSubscribeToEvent takes it)."""


class AnyMessage(Message):
    """An entry of any type, its payload kept as is (``model_extra``), for the relay."""

    model_config = ConfigDict(frozen=True, extra="allow")


class Subscribed(Event):
    """A subscription was made: who, to what, delivered where, and how."""

    owner: str
    channel: str
    uri: str
    auth_token: str = ""
    """Sent to the recipient as ``Authorization: Bearer <token>`` (the recipient's own)."""
    secret: str
    """The Standard Webhooks signing secret (``whsec_...``)."""
    cookie: str = ""
    once: bool = False
    """Remove after the first successful delivery."""
    full_data: bool = False
    """Deliver the event's data too, not only ids, type, time and cookie."""
    since_ms: int | None = None
    """Replay the events of [since_ms, until_ms] first (a new receiver catching up)."""
    until_ms: int | None = None
    key_hash: str
    """SHA-256 of the access key that may delete it."""


class CookieReplaced(Event):
    """The same owner subscribed to the same channel again: the latest cookie wins."""

    cookie: str


class Unsubscribed(Event):
    """The subscription ended: deleted, sent once, or its receiver answered 410."""

    reason: str


class Queued(Event):
    """One delivery for a subscription: the event it is about, as thin as the payload."""

    subsystem: str
    stream: str
    entry_id: str
    message_id: str
    type: str
    object_id: str = ""
    at_ms: int = 0
    channel: str
    generation: int
    """The subscription's generation it was queued for (one made again starts afresh)."""
    data: dict[str, Any] | None = None
    """The event's payload, for a subscription with ``full_data``."""
    trigger: dict[str, Any] | None = None
    """A realtime trigger's event id and data (MDriven's ReceiveEvent)."""
    remove_after_send: bool = False


class Triggered(Event):
    """A realtime event (MDriven's RealtimeTriggerEvent): each subscriber gets its cookie."""

    event_id: str = Field(min_length=1, max_length=200)
    data: str = Field(default="", max_length=65_536)
    remove_after_send: bool = False


class Subscription(Aggregate):
    """A subscription's current state, folded from its events."""

    owner: str = ""
    channel: str = ""
    uri: str = ""
    auth_token: str = ""
    secret: str = ""
    cookie: str = ""
    once: bool = False
    full_data: bool = False
    since_ms: int | None = None
    until_ms: int | None = None
    key_hash: str = ""
    active: bool = False
    ended: str = ""
    generation: int = 0
    """The version of its last ``Subscribed``: a subscription made again is a new one."""

    def apply(self, event: Event) -> None:
        """Fold one event."""
        match event:
            case Subscribed():
                data = event.model_dump()
                for name in ("owner", "channel", "uri", "auth_token", "secret", "cookie",
                             "once", "full_data", "since_ms", "until_ms", "key_hash"):  # fmt: skip
                    setattr(self, name, data[name])
                self.active, self.ended = True, ""
                self.generation = self.version + 1  # fold counts this event after apply
            case CookieReplaced(cookie=cookie):
                self.cookie = cookie
            case Unsubscribed(reason=reason):
                self.active, self.ended = False, reason


class DeliveryQueue(Aggregate):
    """A subscription's deliveries; only its version (the last sequence number) matters."""

    def apply(self, event: Event) -> None:
        """Nothing to fold: the queue is read item by item."""


MESSAGES: dict[str, type[Message]] = {
    "streamcqrs.edge.Subscribed": Subscribed,
    "streamcqrs.edge.CookieReplaced": CookieReplaced,
    "streamcqrs.edge.Unsubscribed": Unsubscribed,
    "streamcqrs.edge.Queued": Queued,
    "streamcqrs.edge.Triggered": Triggered,
}
for _name, _cls in MESSAGES.items():
    registry.register(_cls, _name)


class AnyTypes(TypeRegistry):
    """A registry that takes every type name: the edge's own types as themselves, any other
    as ``AnyMessage`` with its payload as stored (no upcasting: it is passed on as it is)."""

    def __init__(self) -> None:
        super().__init__()
        for name, cls in MESSAGES.items():
            self.register(cls, name)
        self.register(AnyMessage, ANY_TYPE)

    def of_name(self, name: str) -> MessageType:
        """The edge's own type, or ``AnyMessage`` under this name."""
        try:
            return super().of_name(name)
        except UnknownMessageType:
            return MessageType(name, 0, AnyMessage)

    def upcast(self, name: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload unchanged for a type the edge does not know (it is only passed on)."""
        if self.of_name(name).cls is AnyMessage:
            return payload
        return super().upcast(name, version, payload)


def subscription_id(owner: str, channel: str) -> str:
    """A subscription's id: one per (owner, channel)."""
    return hashlib.blake2b(f"{owner}\n{channel}".encode(), digest_size=12).hexdigest()


def queue_id(sid: str) -> str:
    """The id of a subscription's delivery queue aggregate."""
    return f"{sid}.q"


def key_hash(access_key: str) -> str:
    """How an access key (or a bearer token) is stored: its SHA-256, hex."""
    return hashlib.sha256(access_key.encode()).hexdigest()


__all__ = [
    "ANY_TYPE",
    "END_SUBSCRIPTION",
    "AnyMessage",
    "AnyTypes",
    "CookieReplaced",
    "DeliveryQueue",
    "Queued",
    "Subscribed",
    "Subscription",
    "Triggered",
    "Unsubscribed",
    "key_hash",
    "queue_id",
    "subscription_id",
]
