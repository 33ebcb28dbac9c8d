"""Versioned aggregates: each keeps its own list of events, appended to under a version check.

An aggregate's events live in one list key of its partition (``keys.aggregate(id)``), each
packed small (``commit.pack_event``: message id, type, schema, time, payload, and the entry id
the event also got in the subsystem's event stream, which is what bots consume). Its version
is the number of events, so there is no other key to keep in step. A list, not a stream per
aggregate: a new stream allocates a whole node (about 4 KB) for its first entry, and most
aggregates are small.

Append goes through ``commit.lua``: if the aggregate is not at ``expected_version`` it raises
``ConcurrencyConflict`` and writes nothing; an append that repeats the aggregate's last
events (same message ids) returns the originals instead of writing twice (a retried call).
Loading takes the latest snapshot, if any, and folds only the events after its version; it
can stop at a version or a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

import orjson
import redis.asyncio
from pydantic import ValidationError

from streamcqrs.domain.aggregate import Aggregate
from streamcqrs.domain.messages import Event
from streamcqrs.domain.registry import TypeRegistry, registry
from streamcqrs.streams._ids import entry_key, to_ms
from streamcqrs.streams.commit import Commit, OnExisting, unpack_event
from streamcqrs.streams.envelope import (
    JSON,
    Envelope,
    Record,
    as_str,
    as_tags,
    decode,
    encode,
    parse,
    script_entry,
)
from streamcqrs.streams.errors import DecodeError
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.scripts import script

A = TypeVar("A", bound=Aggregate)
PAGE = 1000
"""Events per LRANGE when an aggregate is loaded."""
HEADER = b"H"
"""First byte of an aggregate list's optional first item: ``H<base>``, the number of older
events compacted away behind a snapshot."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The aggregate's version after the append, the event-stream entries, whether it wrote."""

    version: int
    entry_ids: tuple[str, ...]
    written: bool


@dataclass(frozen=True, slots=True)
class _Stored:
    """How an aggregate's list is laid out: events before it (compacted), and list offset."""

    base: int
    offset: int
    count: int

    @property
    def version(self) -> int:
        return self.base + self.count


class AggregateStore(Generic[A]):
    """Load and append to the aggregates of one class in one subsystem."""

    def __init__(
        self,
        keys: SubsystemKeys,
        cls: type[A],
        client: redis.asyncio.Redis,
        *,
        types: TypeRegistry = registry,
    ) -> None:
        self.keys = keys
        self.cls = cls
        self.client = client
        self.types = types

    def _key(self, aggregate_id: str) -> str:
        return self.keys.for_object(aggregate_id).aggregate(aggregate_id)

    def envelopes(
        self,
        aggregate_id: str,
        events: Sequence[Event],
        *,
        tags: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        correlation_id: str = "",
        causation_id: str = "",
    ) -> list[Envelope]:
        """Wrap events for an append to ``aggregate_id``."""
        tag_pairs = as_tags(tags)
        return [
            encode(
                event,
                object_id=aggregate_id,
                tags=tag_pairs,
                correlation_id=correlation_id,
                causation_id=causation_id,
                types=self.types,
            )
            for event in events
        ]

    async def append(
        self,
        aggregate_id: str,
        events: Sequence[Event] | Sequence[Envelope],
        *,
        expected_version: int | None,
        tags: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        correlation_id: str = "",
        causation_id: str = "",
    ) -> AppendResult:
        """Append events if the aggregate is at ``expected_version`` (None: no check)."""
        envelopes = [e for e in events if isinstance(e, Envelope)] or self.envelopes(
            aggregate_id,
            [e for e in events if isinstance(e, Event)],
            tags=tags,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        commit = Commit()
        commit.append(self.keys, aggregate_id, envelopes, expected_version)
        version, ids, written = (await commit.run(self.client))[0]
        return AppendResult(int(version), tuple(as_str(i) for i in ids), bool(written))

    async def _layout(self, key: str) -> _Stored:
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(key)
        pipe.lindex(key, 0)
        length, head = await pipe.execute()
        if head is not None and bytes(head).startswith(HEADER):
            return _Stored(int(bytes(head)[1:]), 1, int(length) - 1)
        return _Stored(0, 0, int(length))

    async def version(self, aggregate_id: str) -> int:
        """The aggregate's current version (0 if it has no events)."""
        return (await self._layout(self._key(aggregate_id))).version

    async def events(
        self, aggregate_id: str, after_version: int = 0, *, upto_version: int | None = None
    ) -> list[Record]:
        """The aggregate's events after version ``after_version`` (all by default), in order.

        Each record's ``entry_id`` is the event's entry in the subsystem's event stream and
        its ``envelope.seq`` the aggregate's version after it. Events compacted away behind
        a snapshot are not there any more: asking for them raises DecodeError.
        """
        key = self._key(aggregate_id)
        layout = await self._layout(key)
        if after_version < layout.base:
            raise DecodeError(
                key, "", f"events up to version {layout.base} were compacted behind a "
                f"snapshot; load from the snapshot instead of version {after_version}",
            )  # fmt: skip
        last = layout.version if upto_version is None else min(upto_version, layout.version)
        out: list[Record] = []
        version = after_version
        while version < last:
            start = layout.offset + version - layout.base
            stop = start + min(PAGE, last - version) - 1
            page = cast(list[bytes], await self.client.lrange(key, start, stop))
            if not page:
                break
            for packed in page:
                version += 1
                out.append(self._record(key, aggregate_id, packed, version))
        return out

    def _record(self, key: str, aggregate_id: str, packed: bytes, version: int) -> Record:
        try:
            envelope, entry_id = unpack_event(packed, aggregate_id, version)
        except (ValueError, TypeError) as exc:
            raise DecodeError(key, f"v{version}", f"not a stored event: {exc}") from exc
        message = decode(key, entry_id, envelope, self.types)
        if not isinstance(message, Event):
            raise DecodeError(
                key, entry_id, f"{envelope.type!r} is not an Event; only events can be folded "
                f"into {self.cls.__qualname__}",
            )  # fmt: skip
        return Record(key, entry_id, envelope, message)

    async def load(
        self,
        aggregate_id: str,
        *,
        use_snapshot: bool = True,
        at_version: int | None = None,
        at_time: datetime | int | None = None,
    ) -> A:
        """The aggregate as of its latest event, or as of ``at_version`` or ``at_time``.

        Starts from the latest snapshot when it is not past the point asked for, then folds
        the events after it. ``at_time`` (a datetime or epoch ms) takes the events committed
        at or before it (by their entry in the event stream).
        """
        cutoff = None if at_time is None else to_ms(at_time, 0)
        state = await self._snapshot(aggregate_id) if use_snapshot else None
        if state is not None and at_version is not None and state.version > at_version:
            state = None
        if state is not None and cutoff is not None:
            # Usable only if the event it was taken at was committed by the time asked for.
            taken_at = await self.events(
                aggregate_id, state.version - 1, upto_version=state.version
            )
            if not taken_at or entry_key(taken_at[0].entry_id)[0] > cutoff:
                state = None
        if state is None:
            state = self.cls(id=aggregate_id)
        for record in await self.events(aggregate_id, state.version, upto_version=at_version):
            if cutoff is not None and entry_key(record.entry_id)[0] > cutoff:
                break
            state.apply(cast(Event, record.message))
            state.version = record.envelope.seq or state.version + 1
        return state

    async def latest_snapshot(self, aggregate_id: str) -> A | None:
        """The aggregate's latest snapshot (its state and version), or None; the state as a
        snapshot holds it, without the events since (``load`` adds those)."""
        return await self._snapshot(aggregate_id)

    async def _snapshot(self, aggregate_id: str) -> A | None:
        part = self.keys.for_object(aggregate_id)
        key = part.stream(Kind.SNAPSHOTS)
        found = await script("latest").run(
            self.client, [part.index(Kind.SNAPSHOTS), key], [aggregate_id]
        )
        if not found:
            return None
        entry_id, raw = script_entry(found)
        envelope = parse(key, as_str(entry_id), raw)
        try:
            body: dict[str, Any] = orjson.loads(envelope.payload)
            state = self.cls.model_validate(body["state"])
            state.version = int(body["version"])
            return state
        except (ValueError, KeyError, TypeError, ValidationError):
            # A snapshot of an older shape of the class: replaying the events is always right.
            return None

    async def snapshot(self, aggregate: A, *, keep: int = 1) -> str | None:
        """Store ``aggregate`` as a snapshot, keeping the newest ``keep`` per aggregate.

        Skipped (None) unless the aggregate is at its stored version: a snapshot of a state
        that moved on since it was folded would hide the events in between.
        """
        if aggregate.version == 0 or aggregate.version != await self.version(aggregate.id):
            return None
        commit = Commit()
        envelope = snapshot_envelope(aggregate)
        commit.put(self.keys, Kind.SNAPSHOTS, envelope, on_existing=OnExisting.PRUNE, keep=keep)
        entry_id, _ = (await commit.run(self.client))[0]
        return as_str(entry_id)


def snapshot_envelope(aggregate: Aggregate) -> Envelope:
    """An aggregate's state at its version, as a snapshots-stream record (JSON)."""
    state = aggregate.model_dump(mode="json")
    return Envelope(
        type=f"snapshot:{type(aggregate).__name__}",
        payload=orjson.dumps({"state": state, "version": aggregate.version}),
        object_id=aggregate.id,
        fmt=JSON,
    )


__all__ = ["AggregateStore", "AppendResult", "snapshot_envelope"]
