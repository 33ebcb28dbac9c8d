"""The client protocol (Naos): execute an operation, get a tracking id, ask its status.

>>> client = Client(Subsystem("notification", redis_client))
>>> tracking_id = await client.execute(SendNotification(...), idempotency_key="order-7")
>>> (await client.status(tracking_id)).state
<State.RUNNING: 'Running'>

``execute`` takes a tracking id from the subsystem's client-operation sequence (INCR on
partition 0) and puts the operation under it: its object id is the tracking id (unless
``object_id`` names another object), its message id is derived from the tracking id, so
``status`` finds the record from the tracking id alone. Each put also sets a tracking pointer
(``keys.tracking``: which entry the operation became) in the same script call.

Idempotency, under the write-only client role: the key's digest names a once-only key
(``keys.idempotency``) that only the put's own script reads (``Commit.once``): the first
execute sets it to its tracking id, every later one within ``ttl`` is refused by the script
with that tracking id and writes nothing. The client never reads its stream.

With more than one partition the idempotency key and the record may sit in different slots,
so an idempotent execute is two script calls: *reserve* (set the key to this call's tracking
id, or learn the one already there) in the key's partition, then *put* in the record's
partition, guarded by the tracking pointer, which refuses a second put of the same tracking id.
What that guarantees:

* an ``execute`` that returned a tracking id has stored its operation, exactly once;
* any number of calls with one key within ``ttl`` (concurrent, or retries after a crash or a
  lost reply) return one tracking id and store one entry;
* a call that raised or never returned may have reserved the key without putting: its
  operation is stored by the next call with that key (a retry must reuse the key), and is
  not stored at all if no call with the key follows. Tracking ids are unique, not gapless.

``status`` needs no read of the stream either: per concern (consumer group) the stored
handling status, Running when that status is claimable and the record's entry is pending in
the concern's group (bots store no Running: the pending entry is the claim), and whether a
dead letter of the record is still open (its record still Failed: retrying or archiving it
from ``dead-letters`` closes it). See ``streams.acl.status`` for the grants. The tracking
pointer names the entry the operation was put as: a retry is a new entry (parked, then put
again by the mover), so while a *retry* runs the status says Available (its stored
AvailableAfterFailure) rather than Running. After ``ttl`` the pointer is gone and ``status``
answers not found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any, cast

import redis.asyncio
from redis.exceptions import ResponseError

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.domain.messages import Message
from streamcqrs.domain.policy import ExecutionPolicy
from streamcqrs.streams._wire import send_all
from streamcqrs.streams.commit import POLICY_FIELD, Commit
from streamcqrs.streams.deadletter import KIND as DEAD
from streamcqrs.streams.envelope import Tags, as_str, as_tags, encode
from streamcqrs.streams.errors import AlreadySet, IdempotencyKeyReused
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys
from streamcqrs.streams.statuses import CLAIMABLE, Status, decode_stored
from streamcqrs.streams.subsystem import Subsystem
from streamcqrs.streams.tracing import Span, put_span

OperationFactory = Callable[[int], Message]
"""Builds the operation once its tracking id is known (an operation that carries its id)."""
TagsIn = Iterable[tuple[str, str]] | Mapping[str, str] | None
DEFAULT_TTL = timedelta(hours=24)
"""How long an idempotency key and a tracking pointer are kept."""
MAX_KEY_LENGTH = 255
"""Longest idempotency key accepted (it is stored as a digest, whatever its length)."""


class State(StrEnum):
    """Where an operation stands for one concern, as a client sees it."""

    AVAILABLE = "Available"
    """Not handled yet (or waiting for its next attempt, or disabled by an operator)."""
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    """Failed for good (also once archived after failing)."""


_STATE_OF = {
    Status.RUNNING: State.RUNNING,
    Status.COMPLETED: State.COMPLETED,
    Status.FAILED: State.FAILED,
    Status.ARCHIVED_AFTER_FAILURE: State.FAILED,
}


@dataclass(frozen=True, slots=True)
class ConcernStatus:
    """One concern's handling of the operation."""

    concern: str
    state: State
    status: Status
    """The Naos status it stands for (Running derived from the pending entry)."""
    dead_letter: bool = False
    """A dead letter of this record for this concern is open (not retried, not archived)."""


@dataclass(frozen=True, slots=True)
class OperationStatus:
    """What ``Client.status`` answers: the operation's state per concern, and overall."""

    tracking_id: int
    found: bool
    """False: no operation is known under this id (never executed, or its pointer expired
    and its record is not under the tracking id as object id)."""
    concerns: Mapping[str, ConcernStatus] = field(default_factory=dict)
    rejected: bool = False
    """The entry was dead-lettered as bad input (no handler takes its type on the stream)."""

    @property
    def state(self) -> State:
        """Failed if any concern failed, Running if any runs, Completed if all completed."""
        states = {each.state for each in self.concerns.values()}
        for state in (State.FAILED, State.RUNNING):
            if state in states:
                return state
        if self.rejected:
            return State.FAILED
        return State.COMPLETED if states == {State.COMPLETED} else State.AVAILABLE

    @property
    def dead_letter(self) -> bool:
        """Some concern has an open dead letter of it, or it was rejected as bad input."""
        return self.rejected or any(c.dead_letter for c in self.concerns.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"tracking_id", "found", "state", "dead_letter", "concerns": {...}}``."""
        return {
            "tracking_id": self.tracking_id,
            "found": self.found,
            "state": self.state.value,
            "dead_letter": self.dead_letter,
            "concerns": {
                name: {"state": c.state.value, "status": c.status.value,
                       "dead_letter": c.dead_letter}
                for name, c in sorted(self.concerns.items())
            },
        }  # fmt: skip


def tracking_message_id(keys: SubsystemKeys, kind: Kind, tracking_id: int) -> str:
    """The message id of the operation executed under ``tracking_id`` (32 hex chars)."""
    seed = f"{keys.subsystem}/{kind}/{tracking_id}".encode()
    return hashlib.blake2b(seed, digest_size=16).hexdigest()


async def next_tracking_id(client: redis.asyncio.Redis, keys: SubsystemKeys, kind: Kind) -> int:
    """A fresh tracking id: INCR on partition 0's sequence (redis-py's ``incr`` sends INCRBY,
    which client users may not run: it could move the sequence back)."""
    sequence = keys.partition(0).sequence(kind)
    return int(await client.execute_command("INCR", sequence))  # type: ignore[no-untyped-call]


def key_digest(idempotency_key: str) -> str:
    """What an idempotency key is stored as: a digest, so any text makes a valid key name."""
    return hashlib.blake2b(idempotency_key.encode(), digest_size=16).hexdigest()


def fingerprint(message: Message, types: Any) -> str:
    """A short digest of an operation's type and payload: one key, one request."""
    envelope = encode(message, types=types)
    return hashlib.blake2b(envelope.type.encode() + envelope.payload, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class _Request:
    """What an execute puts, besides its tracking id."""

    op: Message | OperationFactory
    object_id: str | int | None
    tags: Tags
    correlation_id: str
    policy: ExecutionPolicy | None = None
    span: Span | None = None
    """The put's span when tracing is on: the entry names it, and it names the entry."""


class Client:
    """Execute operations into one subsystem's client-operation stream and ask their status."""

    def __init__(
        self,
        subsystem: Subsystem,
        *,
        concerns: Sequence[str] | None = None,
        ttl: timedelta = DEFAULT_TTL,
        kind: Kind = Kind.CLIENT_OPERATIONS,
    ) -> None:
        self.keys = subsystem.keys
        self.client: redis.asyncio.Redis = subsystem.client
        self.types = subsystem.types
        self.kind = kind
        self.concerns = tuple(concerns) if concerns is not None else None
        """The concerns ``status`` reports (None: the stream's consumer groups)."""
        self.ttl_ms = int(ttl.total_seconds() * 1000)
        if self.ttl_ms < 1000:
            raise ConfigurationError(f"ttl must be at least a second, not {ttl}")

    # -- execute -------------------------------------------------------------------------------

    async def execute(
        self,
        op: Message | OperationFactory,
        *,
        idempotency_key: str | None = None,
        object_id: str | int | None = None,
        tags: TagsIn = None,
        correlation_id: str = "",
        policy: ExecutionPolicy | None = None,
    ) -> int:
        """Put an operation under a fresh tracking id; return the tracking id.

        ``op`` is the operation, or a function building it from its tracking id. With
        ``idempotency_key``, every call with that key within the ttl returns the first
        call's tracking id and stores one operation (see the module docstring).
        IdempotencyKeyReused if the key was used for a different operation. ``policy``
        (default: the operation class's) travels with the entry, as with ``put``; with
        tracing on the execute is a put's span.
        """
        with put_span(f"{self.keys.subsystem}/{self.kind}") as span:
            return await self._execute(op, idempotency_key,
                                       _Request(op, object_id, as_tags(tags), correlation_id,
                                                policy, span))  # fmt: skip

    async def _execute(
        self, op: Message | OperationFactory, idempotency_key: str | None, request: _Request
    ) -> int:
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_KEY_LENGTH:
            raise ConfigurationError(
                f"an idempotency key must be 1 to {MAX_KEY_LENGTH} characters long"
            )
        # A factory's payload carries its tracking id: only a ready operation is compared.
        mark = fingerprint(op, self.types) if isinstance(op, Message) else ""
        tracking_id = await next_tracking_id(self.client, self.keys, self.kind)
        if idempotency_key is None:
            await self._put(tracking_id, request)
            return tracking_id
        digest = key_digest(idempotency_key)
        claim = f"{tracking_id}:{mark}"
        if self.keys.partitions == 1:
            # One slot: the key, the record and its pointer go in one script call.
            idem = self.keys.partition(0).idempotency(self.kind, digest)
            commit = Commit()
            commit.once(idem, self.ttl_ms, claim)
            self._fill_put(commit, tracking_id, request)
            try:
                await commit.run(self.client)
                return tracking_id
            except AlreadySet as taken:
                return self._first(taken, idem, idempotency_key, mark)
        idem = self.keys.for_object(digest).idempotency(self.kind, digest)
        reserve = Commit()
        reserve.once(idem, self.ttl_ms, claim)
        try:
            await reserve.run(self.client)
            first = tracking_id
        except AlreadySet as taken:
            first = self._first(taken, idem, idempotency_key, mark)
        await self._put(first, request)
        return first

    def _first(self, taken: AlreadySet, idem: str, key: str, mark: str) -> int:
        """The tracking id an idempotency key already holds (or the refusal, if it is not)."""
        if taken.key != idem:
            raise taken  # the tracking pointer of a fresh id: cannot be set; say so, loudly
        held, _, held_mark = taken.value.partition(":")
        if mark and held_mark and mark != held_mark:
            raise IdempotencyKeyReused(
                f"idempotency key {key!r} was used for a different operation (tracking id "
                f"{held}); use a new key for a new request"
            )
        return int(held)

    def _fill_put(self, commit: Commit, tracking_id: int, request: _Request) -> PartitionKeys:
        """Add the put of ``tracking_id``'s operation and its tracking pointer to ``commit``."""
        op = request.op
        message = op if isinstance(op, Message) else op(tracking_id)
        span = request.span
        envelope = encode(
            message,
            object_id=str(tracking_id if request.object_id is None else request.object_id),
            tags=request.tags,
            correlation_id=request.correlation_id,
            message_id=tracking_message_id(self.keys, self.kind, tracking_id),
            types=self.types,
            trace=span.traceparent if span else "",
        )
        if span:
            span.named(envelope)
        part = self.keys.for_object(envelope.object_id)
        policy = ExecutionPolicy.packed_for(message, request.policy)
        commit.put_at(part, self.kind, envelope, extra=(POLICY_FIELD, policy) if policy else ())
        commit.once(part.tracking(self.kind, tracking_id), self.ttl_ms)
        return part

    async def _put(self, tracking_id: int, request: _Request) -> None:
        """Put the operation of ``tracking_id`` once: a second put of it writes nothing."""
        commit = Commit()
        part = self._fill_put(commit, tracking_id, request)
        try:
            await commit.run(self.client)
        except AlreadySet as taken:
            if taken.key != part.tracking(self.kind, tracking_id):
                raise

    # -- status --------------------------------------------------------------------------------

    async def status(
        self, tracking_id: int, *, object_id: str | int | None = None
    ) -> OperationStatus:
        """The operation's status per concern (see the module docstring).

        Pass ``object_id`` if the operation was executed with one of its own: the record is
        found faster, and in its partition.
        """
        tracking_id = int(tracking_id)
        located = await self._locate(tracking_id, object_id)
        if located is None:
            return OperationStatus(tracking_id, False)
        part, entry_id = located
        record = tracking_message_id(self.keys, self.kind, tracking_id)
        concerns = self.concerns if self.concerns is not None else await self._groups(part)
        stream = part.stream(self.kind)
        calls: list[tuple[Any, ...]] = [
            ("HMGET", part.handling_flags(self.kind), record,
             *(part.stream_switch(c) for c in concerns)),
            ("HMGET", part.index(DEAD), record, f"{stream}@{entry_id}"),
        ]  # fmt: skip
        for concern in concerns:
            calls.append(("HGET", part.handling_status(self.kind, concern), record))
            calls.append(("XPENDING", stream, concern, entry_id, entry_id, 1))
        replies = await send_all(self.client, calls)
        for reply in replies[:2]:
            if isinstance(reply, Exception):
                raise reply
        (record_flag, *switches), (lettered, rejected) = replies[0], replies[1]
        out: dict[str, ConcernStatus] = {}
        for at, concern in enumerate(concerns):
            stored, pending = replies[2 + 2 * at], replies[3 + 2 * at]
            if isinstance(stored, Exception):
                raise stored
            status = decode_stored(stored)[0]
            if record_flag == Status.DISABLED_FOR_RECORD.value.encode():
                status = Status.DISABLED_FOR_RECORD
            elif status in CLAIMABLE and switches[at] == Status.DISABLED_FOR_STREAM.value.encode():
                status = Status.DISABLED_FOR_STREAM
            # A group that is gone (NOGROUP) has nothing pending.
            if status in CLAIMABLE and isinstance(pending, list) and pending:
                status = Status.RUNNING
            state = _STATE_OF.get(status, State.AVAILABLE)
            dead = lettered is not None and status is Status.FAILED
            out[concern] = ConcernStatus(concern, state, status, dead)
        return OperationStatus(tracking_id, True, out, rejected is not None)

    async def _locate(
        self, tracking_id: int, object_id: str | int | None
    ) -> tuple[PartitionKeys, str] | None:
        """The record's partition and the entry it was put as; None if no record is known.

        From the tracking pointer, in the partition of the object id; a record put under an
        object id of its own, when ``object_id`` is not given, is looked for in every one.
        """
        home = self.keys.for_object(str(tracking_id if object_id is None else object_id))
        parts = [home] if object_id is not None else [home, *(
            p for p in self.keys.all() if p != home
        )]  # fmt: skip
        calls: list[tuple[Any, ...]] = [("GET", p.tracking(self.kind, tracking_id)) for p in parts]
        for part, pointer in zip(parts, await send_all(self.client, calls), strict=True):
            if isinstance(pointer, Exception):
                raise pointer
            if pointer is not None:
                return part, as_str(pointer)
        return None

    async def _groups(self, part: PartitionKeys) -> list[str]:
        """The concerns reading the stream: its consumer groups (none before a bot started)."""
        try:
            groups = await self.client.xinfo_groups(part.stream(self.kind))
        except ResponseError:
            return []  # no stream yet
        return sorted(as_str(cast(bytes | str, g["name"])) for g in groups)


__all__ = [
    "DEFAULT_TTL",
    "Client",
    "ConcernStatus",
    "OperationFactory",
    "OperationStatus",
    "State",
    "fingerprint",
    "key_digest",
    "next_tracking_id",
    "tracking_message_id",
]
