"""Subscriptions in Python: subscribe, replace the cookie, unsubscribe, trigger realtime events.

>>> subs = Subscriptions(redis_client)
>>> made = await subs.subscribe(owner="http://svc/", channel="event://*/events/*",
...                             uri="http://svc/notify", cookie="Viewmodel=X&RootId=7")
>>> made.access_key, made.location           # keep both: DELETE needs the key
>>> await subs.unsubscribe(made.id, made.access_key)

A subscription lives in its own subsystem (``subscriptions`` by default) as an aggregate,
with a view of it (what the relay reads) written in the same commit. Subscribing again with
the same owner and channel replaces the cookie (the latest wins); a blank cookie or
``"endsubscription"`` ends it. ``trigger`` puts a realtime event (MDriven's
RealtimeTriggerEvent) whose subscribers each get their own cookie back.

The view also says from when live events count: ``live_after_ms``, the time of the
subscription's first view entry (server time, the same clock as every entry id). An event
whose entry is later than that is delivered live; one at or before it belongs to the replay
of ``since``..``until``, so a receiver registered with a range gets each event once.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio

from streamcqrs.bots.edge.channels import Channel
from streamcqrs.bots.edge.messages import (
    END_SUBSCRIPTION,
    CookieReplaced,
    Subscribed,
    Subscription,
    Triggered,
    Unsubscribed,
    key_hash,
    subscription_id,
)
from streamcqrs.domain.errors import ConcurrencyConflict
from streamcqrs.domain.messages import Event
from streamcqrs.streams import (
    AggregateStore,
    Commit,
    Kind,
    OnExisting,
    ReadOnlyStream,
    Record,
    Subsystem,
    SubsystemKeys,
    to_ms,
)
from streamcqrs.streams._ids import entry_key
from streamcqrs.streams.envelope import encode, encode_view
from streamcqrs.streams.errors import StreamError

SUBSCRIPTIONS = "subscriptions"
"""The subsystem subscriptions live in, unless told otherwise."""
REALTIME = "realtime"
"""The subsystem realtime triggers go to (``realtime/events``), unless told otherwise."""
VIEW_TYPE = "streamcqrs.edge.SubscriptionView"


class SubscriptionError(StreamError):
    """A subscription request cannot be done as asked (the message says what to change)."""


class AccessDenied(SubscriptionError):
    """The access key given does not open this subscription."""


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    """A subscription as the relay and the gateway see it (its view, with where it stands)."""

    id: str
    owner: str
    channel: str
    uri: str
    auth_token: str
    secret: str
    cookie: str
    once: bool
    full_data: bool
    since_ms: int | None
    until_ms: int | None
    key_hash: str
    active: bool
    generation: int
    """The version of its last ``Subscribed``: a subscription made again is a new one."""
    live_after_ms: int
    entry_id: str = ""

    @property
    def pattern(self) -> Channel:
        """The parsed channel."""
        return Channel.parse(self.channel)

    @property
    def replays(self) -> bool:
        """True if it was registered with a range to replay."""
        return self.since_ms is not None

    def public(self) -> dict[str, Any]:
        """What its owner may see: no secret, no token, no key hash."""
        return {
            "id": self.id, "owner": self.owner, "channel": self.channel, "uri": self.uri,
            "cookie": self.cookie, "remove_after_send": self.once, "full_data": self.full_data,
            "since_ms": self.since_ms, "until_ms": self.until_ms, "active": self.active,
        }  # fmt: skip


def view_of(record: Record) -> SubscriptionView:
    """Read a subscription's view record."""
    body = orjson.loads(record.raw)
    live_after = body.get("live_after_ms") or entry_key(record.entry_id)[0]
    return SubscriptionView(
        id=body["id"], owner=body["owner"], channel=body["channel"], uri=body["uri"],
        auth_token=body["auth_token"], secret=body["secret"], cookie=body["cookie"],
        once=body["once"], full_data=body["full_data"], since_ms=body["since_ms"],
        until_ms=body["until_ms"], key_hash=body["key_hash"], active=body["active"],
        generation=body["generation"], live_after_ms=int(live_after), entry_id=record.entry_id,
    )  # fmt: skip


def view_body(sub: Subscription, live_after_ms: int | None) -> dict[str, Any]:
    """A subscription's view as stored (JSON); ``live_after_ms`` None on its first view."""
    body: dict[str, Any] = {
        "id": sub.id, "owner": sub.owner, "channel": sub.channel, "uri": sub.uri,
        "auth_token": sub.auth_token, "secret": sub.secret, "cookie": sub.cookie,
        "once": sub.once, "full_data": sub.full_data, "since_ms": sub.since_ms,
        "until_ms": sub.until_ms, "key_hash": sub.key_hash, "active": sub.active,
        "generation": sub.generation,
    }  # fmt: skip
    if live_after_ms is not None:
        body["live_after_ms"] = live_after_ms
    return body


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 24 random bytes, base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def check_uri(uri: str) -> str:
    """An http(s) URL with a host, or SubscriptionError saying so."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SubscriptionError(f"recipient {uri!r} must be an http:// or https:// URL")
    return uri


@dataclass(frozen=True, slots=True)
class Subscribing:
    """What ``subscribe`` did: made it, replaced its cookie, or ended it."""

    id: str
    outcome: str
    """``created``, ``replaced``, ``removed``; ``unchanged`` (the same cookie again) or
    ``absent`` ("endsubscription" for a subscription that does not exist)."""
    access_key: str = ""
    """Only when created: what DELETE needs; stored hashed, never shown again."""
    secret: str = ""
    """Only when created: the signing secret, to verify deliveries with."""

    @property
    def location(self) -> str:
        """Where the subscription is, for the gateway's ``Location`` header."""
        return f"/subscriptions/{self.id}"


class Subscriptions:
    """Make, change and end subscriptions; trigger realtime events (see the module docstring)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        subsystem: str = SUBSCRIPTIONS,
        partitions: int = 1,
        realtime: str = REALTIME,
    ) -> None:
        self.client = client
        self.sub = Subsystem(subsystem, client, partitions=partitions)
        self.keys: SubsystemKeys = self.sub.keys
        self.store = AggregateStore(self.keys, Subscription, client)
        self.realtime = Subsystem(realtime, client)

    async def get(self, sid: str) -> SubscriptionView | None:
        """The subscription's current view, or None."""
        record = await self.sub.reader(Kind.VIEWS).latest(sid)
        return None if record is None else view_of(record)

    async def subscribe(
        self,
        *,
        owner: str,
        channel: str,
        uri: str,
        auth_token: str = "",
        secret: str | None = None,
        cookie: str = "",
        remove_after_send: bool = False,
        full_data: bool = False,
        since: datetime | int | None = None,
        until: datetime | int | None = None,
    ) -> Subscribing:
        """Subscribe ``owner`` to ``channel``, delivered to ``uri``; or replace its cookie.

        Again with the same owner and channel: the cookie is replaced, and a blank cookie or
        ``"endsubscription"`` ends the subscription.
        ``since``/``until`` (datetimes or epoch ms) replay the events of that range first.
        """
        Channel.parse(channel)
        check_uri(uri)
        if not owner:
            raise SubscriptionError("a subscription needs an owner (who it is for)")
        sid = subscription_id(owner, channel)
        ends = cookie.strip() in ("", END_SUBSCRIPTION)
        for _ in range(5):
            current = await self.store.load(sid)
            try:
                if current.active:
                    if ends:
                        await self._end(current, END_SUBSCRIPTION)
                        return Subscribing(sid, "removed")
                    if current.cookie == cookie:
                        return Subscribing(sid, "unchanged")
                    await self._change(current, [CookieReplaced(cookie=cookie)])
                    return Subscribing(sid, "replaced")
                if cookie.strip() == END_SUBSCRIPTION:
                    return Subscribing(sid, "absent")  # nothing to end
                access_key = secrets.token_urlsafe(24)
                signing = secret or new_secret()
                made = Subscribed(
                    owner=owner, channel=channel, uri=uri, auth_token=auth_token,
                    secret=signing, cookie=cookie, once=remove_after_send,
                    full_data=full_data, key_hash=key_hash(access_key),
                    since_ms=None if since is None else to_ms(since, 0),
                    until_ms=None if until is None else to_ms(until, 0),
                )  # fmt: skip
                await self._change(current, [made])
                return Subscribing(sid, "created", access_key, signing)
            except ConcurrencyConflict:
                continue  # another change to it came first: look again
        raise SubscriptionError(f"subscription {sid} kept changing under this request; retry")

    async def unsubscribe(self, sid: str, access_key: str, *, reason: str = "deleted") -> None:
        """End a subscription; AccessDenied unless ``access_key`` is the one it was made with,
        SubscriptionError if there is no such (active) subscription."""
        for _ in range(5):
            current = await self.store.load(sid)
            if not current.active:
                raise SubscriptionError(f"no active subscription {sid}")
            if not secrets.compare_digest(current.key_hash, key_hash(access_key)):
                raise AccessDenied(f"the access key does not open subscription {sid}")
            try:
                await self._end(current, reason)
                return
            except ConcurrencyConflict:
                continue
        raise SubscriptionError(f"subscription {sid} kept changing under this request; retry")

    async def _end(self, current: Subscription, reason: str) -> None:
        await self._change(current, [Unsubscribed(reason=reason)])

    async def _change(self, current: Subscription, events: list[Event]) -> None:
        """Append ``events`` at the version it was loaded at, and its view, in one commit."""
        commit = Commit()
        fill_change(commit, self.keys, current, events, await self._live_after(current, events))
        await commit.run(self.client)

    async def _live_after(self, current: Subscription, events: list[Event]) -> int | None:
        if any(isinstance(e, Subscribed) for e in events):
            return None  # a new subscription counts live events from its first view
        view = await self.get(current.id)
        return view.live_after_ms if view is not None else None

    async def subscribe_realtime(
        self, event_id: str, cookie: str, uri: str, *, owner: str | None = None,
        auth_token: str = "", secret: str | None = None,
    ) -> Subscribing:  # fmt: skip
        """MDriven's RealtimeSubscribeToEvent: ``cookie`` comes back to ``uri`` on each
        trigger of ``event_id``; the latest cookie wins, a blank one or "endsubscription"
        ends it. ``owner`` defaults to ``uri``."""
        return await self.subscribe(
            owner=owner or uri, channel=realtime_channel(self.realtime.name, event_id), uri=uri,
            cookie=cookie, auth_token=auth_token, secret=secret,
        )  # fmt: skip

    async def trigger(self, event_id: str, data: str = "", *, remove_after_send: bool = False
                      ) -> str:  # fmt: skip
        """MDriven's RealtimeTriggerEvent: every subscriber of ``event_id`` gets its cookie
        (and ``data``); ``remove_after_send`` ends each subscription after that delivery.
        Returns the trigger's message id."""
        envelope = encode(
            Triggered(event_id=event_id, data=data, remove_after_send=remove_after_send),
            object_id=event_id,
        )
        commit = Commit()
        commit.put(self.realtime.keys, Kind.EVENTS, envelope)
        await commit.run(self.client)
        return envelope.message_id


def realtime_channel(subsystem: str, event_id: str) -> str:
    """The channel of a realtime event id."""
    return f"event://{subsystem}/events/{event_id}"


def fill_change(
    commit: Commit,
    keys: SubsystemKeys,
    current: Subscription,
    events: Iterable[Event],
    live_after_ms: int | None,
) -> None:
    """Add a subscription's new events (at its loaded version) and its new view to ``commit``."""
    events = list(events)
    changed = current.model_copy(deep=True).fold(events)
    wrapped = [encode(e, object_id=current.id) for e in events]
    commit.append(keys, current.id, wrapped, current.version)
    view = encode_view(
        view_body(changed, live_after_ms), type_name=VIEW_TYPE, object_id=current.id
    )
    commit.put(keys, Kind.VIEWS, view, on_existing=OnExisting.PRUNE, keep=1)


@dataclass(slots=True)
class SubscriptionTable:
    """The subscriptions as one process knows them, kept fresh from their views stream.

    ``fresh()`` makes sure every subscription committed before the call is known: callers
    waiting together share one read.
    """

    views: ReadOnlyStream
    known: dict[str, SubscriptionView]
    cursor_ms: int = 0
    _asked: int = 0
    _done: int = 0
    _lock: asyncio.Lock | None = None

    @classmethod
    def over(cls, views: ReadOnlyStream) -> SubscriptionTable:
        """A table over a subscriptions views stream."""
        return cls(views, {})

    async def fresh(self) -> None:
        """Read what was written to the views since the last read (shared by waiters)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        self._asked += 1
        ticket = self._asked
        async with self._lock:
            if self._done >= ticket:
                return
            target = self._asked
            for record in await self.views.read(since=self.cursor_ms):
                view = view_of(record)
                known = self.known.get(view.id)
                if known is None or entry_key(known.entry_id) <= entry_key(view.entry_id):
                    self.known[view.id] = view
                self.cursor_ms = max(self.cursor_ms, entry_key(record.entry_id)[0])
            self._done = target

    def matching(self, subsystem: str, stream: str, type_name: str) -> list[SubscriptionView]:
        """Active subscriptions whose channel takes this event."""
        return [
            v for v in self.known.values()
            if v.active and v.pattern.matches(subsystem, stream, type_name)
        ]  # fmt: skip

    def get(self, sid: str) -> SubscriptionView | None:
        """A subscription by id (inactive ones too), as of the last ``fresh``."""
        return self.known.get(sid)


__all__ = [
    "REALTIME",
    "SUBSCRIPTIONS",
    "AccessDenied",
    "Subscribing",
    "SubscriptionError",
    "SubscriptionTable",
    "SubscriptionView",
    "Subscriptions",
    "check_uri",
    "fill_change",
    "new_secret",
    "realtime_channel",
    "view_of",
]
