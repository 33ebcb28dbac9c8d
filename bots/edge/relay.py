"""The webhook relay: an app of handlers, run as a bot like any other.

>>> relay = relay_app(watch=["notification/events", "hello/client-ops"])
$ streamcqrs run mymodule:relay

Two concerns:

``webhooks`` (the matcher), on every watched stream: for each entry, the subscriptions whose
channel takes it (and which were live before it was written) get a ``Queued`` delivery
appended to their delivery queue, in the same commit that acks the entry. A crash before
that commit queues nothing and the entry comes again; after it, nothing is queued twice.

``deliver`` (the sender), on the subscriptions' events stream: for each ``Queued`` (and for
each ``Subscribed`` with a range to replay) it takes the subscription's lease (one sender
per receiver at a time, ``pump``) and delivers, in queue order, everything up to and past its
own delivery that is waiting: a burst goes out in one run. A failed POST of its own delivery
is retried with the bot's backoff and, after the bot's last attempt, Failed and
dead-lettered; the deliveries behind it wait (order per subscriber) and go on once it is
delivered or given up. A one-shot subscription (``remove_after_send``, or a realtime trigger
sent with it) ends after its first success, and one whose receiver answers 410 ends at once:
the ``Unsubscribed`` event and the view are in that delivery's commit.

Replay: a subscription registered with ``since`` (and maybe ``until``) gets the watched
streams' matching entries of that range, up to the moment it went live, first, merged in
entry order, before any live delivery; every later entry is a live one. So nothing is missed
at the hand-over and nothing comes twice.

The relay reads events of any type without their classes (``messages.AnyTypes``): it passes
their payload on as stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgpack
import orjson

from streamcqrs.bots.edge import webhooks
from streamcqrs.bots.edge.channels import channel_of
from streamcqrs.bots.edge.messages import (
    AnyMessage,
    AnyTypes,
    Queued,
    Subscribed,
    Subscription,
    Triggered,
    Unsubscribed,
    queue_id,
)
from streamcqrs.bots.edge.pump import Pump, PumpState
from streamcqrs.bots.edge.subscriptions import (
    REALTIME,
    SUBSCRIPTIONS,
    VIEW_TYPE,
    SubscriptionTable,
    SubscriptionView,
    view_body,
)
from streamcqrs.bots.edge.webhooks import Event, Outcome
from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers import App, Context, NotYet, Retry
from streamcqrs.handlers.context import AppendOutput
from streamcqrs.handlers.registry import StreamRef
from streamcqrs.streams import AggregateStore, Kind, Record, SubsystemKeys
from streamcqrs.streams._ids import MAX_ID, entry_key
from streamcqrs.streams.envelope import JSON, MSGPACK, encode, entries, parse
from streamcqrs.streams.statuses import Status, decode_stored

MATCHER = "webhooks"
SENDER = "deliver"
PAGE = 100
"""Entries per stream per read during a replay."""
GIVEN_UP = frozenset({Status.FAILED, Status.ARCHIVED_AFTER_FAILURE})
"""Statuses of a delivery's record that let the ones behind it go on without it."""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """How the relay runs (besides the bot's own settings: attempts, backoff)."""

    watch: tuple[str, ...]
    """Streams whose entries subscriptions may match, ``"subsystem/kind"``."""
    subscriptions: str = SUBSCRIPTIONS
    partitions: int = 1
    """Partitions of the subscriptions subsystem."""
    realtime: str = REALTIME
    timeout: float = 10.0
    """Seconds a receiver may take to answer one POST."""
    batch: int = 100
    """Most deliveries one run sends to one receiver before it hands on."""
    lease_ms: int = 30_000
    """How long a sender's lease on a receiver lasts without progress (a hung sender's)."""
    busy_wait: float = 2.0
    """Seconds a delivery waits (in its handler, then parked for as long) while another run
    is delivering to its receiver."""
    failing_wait: float = 1.0
    """Seconds a delivery waits behind an earlier one that failed and waits for its retry."""


@dataclass
class Relay:
    """The relay's state in one bot process: the subscriptions table and the HTTP client."""

    config: RelayConfig
    app: App
    keys: SubsystemKeys
    watch: list[StreamRef]
    table: SubscriptionTable | None = None
    _http: httpx.AsyncClient | None = None
    _http_loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    async def subscriptions(self, ctx: Context) -> SubscriptionTable:
        """The table, fresh: every subscription committed before this call is in it."""
        if self.table is None:
            self.table = SubscriptionTable.over(ctx.reader(f"{self.keys.subsystem}/views"))
        await self.table.fresh()
        return self.table

    def http(self) -> httpx.AsyncClient:
        """The process's HTTP client (one per event loop)."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop:
            self._http = httpx.AsyncClient(timeout=self.config.timeout, follow_redirects=False)
            self._http_loop = loop
        return self._http


def relay_app(
    watch: Sequence[str],
    *,
    subscriptions: str = SUBSCRIPTIONS,
    partitions: int = 1,
    realtime: str = REALTIME,
    name: str = "relay",
    timeout: float = 10.0,
    batch: int = 100,
    lease_ms: int = 30_000,
    partitions_of: Mapping[str, int] | None = None,
) -> App:
    """The relay as an App for ``streamcqrs run`` (see the module docstring).

    ``watch``: the streams subscriptions may match (``"notification/events"``); the realtime
    subsystem's events are watched as well. ``partitions_of``: the partition counts of the
    watched subsystems, as their app declares them (``App.partitions``); 1 if not given.
    """
    config = RelayConfig(tuple(watch), subscriptions, partitions, realtime, timeout, batch,
                         lease_ms)  # fmt: skip
    refs = sorted({StreamRef.parse(w) for w in (*watch, f"{realtime}/events")})
    if any(ref.subsystem == subscriptions for ref in refs):
        raise ConfigurationError(
            f"the relay cannot watch its own subsystem {subscriptions!r}; watch the streams "
            "your subscriptions are about"
        )
    app = App(name, types=AnyTypes())
    for subsystem, count in (partitions_of or {}).items():
        app.subsystem(subsystem, partitions=count)
    app.subsystem(subscriptions, partitions=partitions)
    relay = Relay(config, app, SubsystemKeys(subscriptions, partitions), refs)
    views = f"{subscriptions}/views"
    for ref in refs:
        # From the beginning: an entry written after a subscription but before the relay's
        # first start is still delivered; older ones match no subscription (each counts only
        # what came after it went live), so a first start reads the history once, sending
        # nothing for it.
        app.handler(AnyMessage, Triggered, stream=str(ref), concern=MATCHER,
                    appends=[subscriptions], reads=[views], start="beginning",
                    name=f"relay.match {ref}")(_matcher(relay))  # fmt: skip
    app.handler(Queued, Subscribed, stream=f"{subscriptions}/events", concern=SENDER,
                appends=[subscriptions], writes=[views], reads=[views, *map(str, refs)],
                start="beginning", name="relay.deliver")(_sender(relay))  # fmt: skip
    app.ignore(Unsubscribed, stream=f"{subscriptions}/events")
    return app


# -- the matcher -----------------------------------------------------------------------------


def _matcher(relay: Relay) -> Any:
    async def match(message: AnyMessage | Triggered, ctx: Context) -> None:
        """Queue a delivery of this entry for each subscription whose channel takes it."""
        table = await relay.subscriptions(ctx)
        ref = ctx.spec.source
        envelope = ctx.envelope
        type_name, trigger = envelope.type, None
        if isinstance(message, Triggered):
            type_name = message.event_id  # a trigger's channel names its event id
            trigger = {"event_id": message.event_id, "data": message.data}
        at_ms = entry_key(ctx.entry_id)[0]
        data = None
        for view in table.matching(ref.subsystem, ref.kind.value, type_name):
            if at_ms <= view.live_after_ms:
                continue  # written before it went live: its replay's (or nobody's) business
            if data is None and view.full_data:
                data = message.model_dump(mode="json")
            queued = Queued(
                subsystem=ref.subsystem, stream=ref.kind.value, entry_id=ctx.entry_id,
                message_id=envelope.message_id, type=envelope.type, object_id=ctx.object_id,
                at_ms=envelope.created_at, channel=channel_of(ref.subsystem, ref.kind.value,
                                                              type_name),
                generation=view.generation, data=data if view.full_data else None,
                trigger=trigger,
                remove_after_send=bool(isinstance(message, Triggered)
                                       and message.remove_after_send),
            )  # fmt: skip
            _queue(relay, ctx, view.id, queued)

    return match


def _queue(relay: Relay, ctx: Context, sid: str, queued: Queued) -> None:
    """Append ``queued`` to the subscription's queue in this handler's commit.

    No version check: the append's own version is the delivery's sequence number, handed
    out by the commit script, so concurrent matchers never race for one.
    """
    qid = queue_id(sid)
    envelope = encode(
        queued,
        object_id=qid,
        correlation_id=ctx.correlation_id,
        causation_id=ctx.message_id,
        message_id=_derived(ctx.message_id, sid),
        types=ctx.types,
    )
    ctx.outputs.append(AppendOutput(relay.keys.subsystem, relay.keys, qid, None, [envelope]))


def _derived(message_id: str, sid: str) -> str:
    """The message id of the delivery an entry makes for a subscription (stable on re-runs)."""
    return hashlib.blake2b(f"{message_id}:{sid}".encode(), digest_size=16).hexdigest()


# -- the sender ------------------------------------------------------------------------------


class _Stop(Exception):
    """A run stops delivering: an earlier delivery failed, or the lease was lost."""

    def __init__(self, reason: str, *, own: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.own = own
        """True if it is this run's own delivery (or replay) that failed."""


def _sender(relay: Relay) -> Any:
    async def deliver(message: Queued | Subscribed, ctx: Context) -> None:
        """Deliver this subscription's waiting deliveries in order, this one included."""
        sid = ctx.object_id[:-2] if isinstance(message, Queued) else ctx.object_id
        table = await relay.subscriptions(ctx)
        run = _Run(relay, ctx, message, table.get(sid), Pump(
            ctx.client, relay.keys.for_object(sid), sid, lease_ms=relay.config.lease_ms
        ))  # fmt: skip
        state = await run.pump.take()
        waited, pause = 0.0, 0.01
        while not state.taken:
            if run.settled(state):
                return
            if waited >= relay.config.busy_wait:
                raise NotYet(relay.config.busy_wait, "another run is delivering to this receiver")
            # The run holding the lease is most likely delivering this one too (a burst):
            # waiting here a moment is cheaper than parking the record and reading it again.
            await asyncio.sleep(pause)
            waited += pause
            pause = min(pause * 2, 0.2)
            state = await run.pump.take()
        try:
            await run.deliver(state)
        except _Stop as stop:
            if stop.own:
                raise Retry(reason=stop.reason) from None
            raise NotYet(relay.config.failing_wait, stop.reason) from None
        finally:
            await run.pump.give()

    return deliver


@dataclass
class _Run:
    """One sender run for one record: its subscription, and the lease once taken."""

    relay: Relay
    ctx: Context
    message: Queued | Subscribed
    view: SubscriptionView | None
    pump: Pump

    @property
    def own(self) -> int:
        """This record's place in the queue (0 for a ``Subscribed``: it only replays)."""
        return (self.ctx.envelope.seq or 0) if isinstance(self.message, Queued) else 0

    @property
    def owns_replay(self) -> bool:
        """This record is the ``Subscribed`` of the subscription's current generation."""
        view = self.view
        return (isinstance(self.message, Subscribed) and view is not None
                and self.ctx.envelope.seq == view.generation)  # fmt: skip

    def settled(self, state: PumpState) -> bool:
        """True if this record has nothing left to do, whoever holds the lease."""
        view = self.view
        if view is None or not view.active:
            return True
        if isinstance(self.message, Subscribed):
            return not self.owns_replay or state.replayed(view.generation)
        return state.done >= self.own

    async def deliver(self, state: PumpState) -> None:
        """Holding the lease: the replay first, then the queue up to (and past) this one."""
        view = self.view
        if view is not None and state.closed(view.generation) and view.active:
            await self.end(view, "sent once")  # the run that closed it died before its commit
        if view is not None and (not view.active or state.closed(view.generation)):
            view = None
        if view is not None and view.replays and not state.replayed(view.generation):
            if not self.owns_replay and await self.replay_given_up(view):
                await self.advance({f"replayed:{view.generation}": 1})
            elif not await self.replay(state, view):
                view = None
        if isinstance(self.message, Queued):
            await self.drain(state, view)

    async def advance(self, values: dict[str, str | int]) -> None:
        """Move the cursor (or mark the replay done, the subscription closed)."""
        if not await self.pump.set(values):
            raise _Stop("lost the lease on this receiver (the run took too long)", own=False)

    async def post(self, view: SubscriptionView, event: Event) -> Outcome:
        """POST one delivery; a failure stops the run (its own: retried; else: waits)."""
        outcome, why = await webhooks.post(self.relay.http(), view, event)
        if outcome is Outcome.FAILED:
            raise _Stop(why, own=False)
        return outcome

    async def drain(self, state: PumpState, view: SubscriptionView | None) -> None:
        """Deliver queued items from the cursor on, in order; stop at the first failure.

        ``view`` None: the subscription ended; its items are passed over.
        """
        relay, ctx, own = self.relay, self.ctx, self.own
        done = state.done
        if done >= own:
            return
        store = AggregateStore(relay.keys, Subscription, ctx.client, types=ctx.types)
        records = await store.events(ctx.object_id, done, upto_version=done + relay.config.batch)
        statuses = await self.statuses(records)
        skipped = 0  # the last of a run of passed-over items: the cursor moves past them at once
        for record, status in zip(records, statuses, strict=True):
            seq = record.envelope.seq or done + 1
            queued = record.message
            assert isinstance(queued, Queued)
            skip = view is None or queued.generation != view.generation
            if not skip and seq != own and status in GIVEN_UP:
                skip = True  # failed for good on its own: the ones behind it go on
            elif not skip and seq != own and status is Status.AVAILABLE_AFTER_FAILURE:
                raise _Stop(f"delivery {seq} failed and waits for its retry", own=False)
            if skip:
                skipped = done = seq
                continue
            assert view is not None
            if skipped:
                await self.advance({"done": skipped})
                skipped = 0
            try:
                outcome = await self.post(view, _event_of(queued))
            except _Stop as stop:
                raise _Stop(f"delivery {seq}: {stop.reason}", own=seq == own) from None
            await self.advance({"done": seq})
            done = seq
            if outcome is Outcome.GONE or view.once or queued.remove_after_send:
                await self.close(view, outcome)
                view = None  # the rest of its queue is passed over, now or by later runs
        if skipped:
            await self.advance({"done": skipped})
        if done < own:
            raise NotYet(0.0, "more deliveries before this one; continuing")

    async def close(self, view: SubscriptionView, outcome: Outcome) -> None:
        """End a subscription after a one-shot delivery or a 410: closed now, ended at commit."""
        await self.advance({f"closed:{view.generation}": 1, f"replayed:{view.generation}": 1})
        gone = outcome is Outcome.GONE
        await self.end(view, "receiver answered 410 Gone" if gone else "sent once")

    async def statuses(self, records: list[Record]) -> list[Status | None]:
        """The send concern's status of each earlier queued delivery (None: not read)."""
        earlier = [r for r in records if (r.envelope.seq or 0) < self.own]
        if not earlier:
            return [None] * len(records)
        part = self.relay.keys.for_object(self.ctx.object_id)
        ids = [r.envelope.message_id for r in earlier]
        stored = await self.ctx.client.hmget(part.handling_status(Kind.EVENTS, SENDER), ids)
        found = {mid: decode_stored(v)[0] for mid, v in zip(ids, stored, strict=True)}
        return [found.get(r.envelope.message_id) for r in records]

    async def replay_given_up(self, view: SubscriptionView) -> bool:
        """True if the run that owns the replay (its ``Subscribed`` record) failed for good."""
        relay, ctx = self.relay, self.ctx
        store = AggregateStore(relay.keys, Subscription, ctx.client, types=ctx.types)
        made = await store.events(view.id, view.generation - 1, upto_version=view.generation)
        if not made:
            return True
        part = relay.keys.for_object(view.id)
        stored = await ctx.client.hget(
            part.handling_status(Kind.EVENTS, SENDER), made[0].envelope.message_id
        )
        return decode_stored(stored)[0] in GIVEN_UP

    async def end(self, view: SubscriptionView, reason: str) -> None:
        """End the subscription in this run's commit: ``Unsubscribed`` and its view."""
        ctx, subsystem = self.ctx, self.relay.keys.subsystem
        sub = await ctx.load(Subscription, view.id, subsystem=subsystem)
        if not sub.active or sub.generation != view.generation:
            return
        ctx.append(sub, Unsubscribed(reason=reason), subsystem=subsystem)
        ctx.put_view(f"{subsystem}/views", view.id, view_body(sub, view.live_after_ms),
                     type_name=VIEW_TYPE)  # fmt: skip

    async def replay(self, state: PumpState, view: SubscriptionView) -> bool:
        """Deliver the range's matching entries up to when it went live, in entry order.

        Returns whether the subscription is still live after it (a one-shot one ends).
        """
        relay, ctx, generation = self.relay, self.ctx, view.generation
        channel = view.pattern
        low = view.since_ms or 0
        high = view.live_after_ms if view.until_ms is None else min(view.until_ms,
                                                                    view.live_after_ms)
        sources = [
            (ref, part.stream(ref.kind))
            for ref in relay.watch
            if channel.covers(ref.subsystem, ref.kind.value)
            for part in ctx.keys(ref.subsystem).all()
        ]
        cursors = {key: state.replay_cursor(generation, key) for _ref, key in sources}
        sent = 0
        while sent < relay.config.batch:
            pages = []
            for ref, key in sources:
                start = f"({cursors[key]}" if cursors[key] else f"{low}-0"
                found = entries(await ctx.client.xrange(key, start, f"{high}-{MAX_ID}",
                                                        count=PAGE))  # fmt: skip
                pages.append([(entry_key(eid), key, ref, eid.decode(), raw) for eid, raw in found])
            if not any(pages):
                await self.advance({f"replayed:{generation}": 1})
                return True
            # In order up to the end of the first full page: past it, that stream may hold more.
            horizon = min((p[-1][0] for p in pages if len(p) == PAGE), default=None)
            for at, key, ref, entry_id, raw in heapq.merge(*pages):
                if horizon is not None and at > horizon:
                    break
                cursors[key] = entry_id
                event = _replayed(ref, key, entry_id, raw)
                if event is None or not channel.matches(ref.subsystem, ref.kind.value,
                                                        _channel_type(event)):  # fmt: skip
                    continue
                try:
                    outcome = await self.post(view, event)
                except _Stop as stop:
                    raise _Stop(f"replay of {key} {entry_id}: {stop.reason}",
                                own=self.owns_replay) from None  # fmt: skip
                sent += 1
                await self.advance(_replay_fields(generation, cursors))
                if outcome is Outcome.GONE or view.once:
                    await self.close(view, outcome)
                    return False
            await self.advance(_replay_fields(generation, cursors))
        raise NotYet(0.0, "replay continues")


def _replay_fields(generation: int, cursors: dict[str, str]) -> dict[str, str | int]:
    return {f"replay:{generation}:{key}": entry for key, entry in cursors.items() if entry}


def _event_of(queued: Queued) -> Event:
    return Event(
        subsystem=queued.subsystem, stream=queued.stream, entry_id=queued.entry_id,
        message_id=queued.message_id, type=queued.type, object_id=queued.object_id,
        at_ms=queued.at_ms, channel=queued.channel, data=queued.data, trigger=queued.trigger,
    )  # fmt: skip


def _channel_type(event: Event) -> str:
    return str(event.trigger["event_id"]) if event.trigger is not None else event.type


def _replayed(ref: StreamRef, key: str, entry_id: str, raw: dict[bytes, bytes]) -> Event | None:
    """A past entry as a delivery's event (None for an entry that is no envelope)."""
    try:
        envelope = parse(key, entry_id, raw)
        if envelope.fmt == MSGPACK:
            data = msgpack.unpackb(envelope.payload)
        elif envelope.fmt == JSON:
            data = orjson.loads(envelope.payload)
        else:
            data = None
    except Exception:  # a malformed entry is the stream's dead-letter business, not ours
        return None
    trigger = None
    if envelope.type == "streamcqrs.edge.Triggered" and isinstance(data, dict):
        trigger = {"event_id": data.get("event_id", ""), "data": data.get("data", "")}
    return Event(
        subsystem=ref.subsystem, stream=ref.kind.value, entry_id=entry_id,
        message_id=envelope.message_id, type=envelope.type, object_id=envelope.object_id,
        at_ms=envelope.created_at, channel=channel_of(ref.subsystem, ref.kind.value,
                                                      trigger["event_id"] if trigger
                                                      else envelope.type),
        data=data if isinstance(data, dict) else None, trigger=trigger, replay=True,
    )  # fmt: skip


__all__ = ["MATCHER", "SENDER", "Relay", "RelayConfig", "relay_app"]
