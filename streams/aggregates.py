"""Versioned aggregates: each has its own event stream, appended to under a version check.

Append goes through ``commit.lua``: if the aggregate is not at ``expected_version`` it raises
``ConcurrencyConflict`` and writes nothing; an event whose message id was appended before
returns the original entries instead of writing twice (safe retries). Each event is also put
into the subsystem's event stream, which is what bots consume. Loading takes the latest
snapshot, if any, and folds only the events after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
import redis.asyncio
from pydantic import ValidationError

from streamcqrs.domain.aggregate import Aggregate
from streamcqrs.domain.messages import Event
from streamcqrs.domain.registry import TypeRegistry, registry
from streamcqrs.streams.commit import Batch, OnExisting
from streamcqrs.streams.envelope import (
    JSON,
    Envelope,
    Record,
    as_str,
    as_tags,
    encode,
    entries,
    parse,
    script_entry,
    to_record,
)
from streamcqrs.streams.errors import DecodeError
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.scripts import script

A = TypeVar("A", bound=Aggregate)
PAGE = 1000


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The aggregate's version after the append, the entries, and whether it wrote."""

    version: int
    entry_ids: tuple[str, ...]
    written: bool


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
        batch = Batch()
        batch.append(self.keys.for_object(aggregate_id), aggregate_id, envelopes, expected_version)
        version, ids, written = (await batch.run(self.client))[0]
        return AppendResult(int(version), tuple(as_str(i) for i in ids), bool(written))

    async def version(self, aggregate_id: str) -> int:
        """The aggregate's current version (0 if it has no events)."""
        found = await self.client.hget(self.keys.for_object(aggregate_id).versions, aggregate_id)
        return int(found or 0)

    async def events(self, aggregate_id: str, after_entry: str = "-") -> list[Record]:
        """The aggregate's event records after the entry ``after_entry`` (all by default)."""
        key = self.keys.for_object(aggregate_id).aggregate(aggregate_id)
        out: list[Record] = []
        low = after_entry if after_entry == "-" else f"({after_entry}"
        while True:
            page = entries(await self.client.xrange(key, low, "+", count=PAGE))
            out += [to_record(key, eid, raw, self.types) for eid, raw in page]
            if len(page) < PAGE:
                return out
            low = f"({as_str(page[-1][0])}"

    async def load(self, aggregate_id: str, *, use_snapshot: bool = True) -> A:
        """The aggregate as of its latest event: snapshot (if any) plus the events after it."""
        state, after = (await self._snapshot(aggregate_id)) if use_snapshot else (None, "-")
        if state is None:
            state, after = self.cls(id=aggregate_id), "-"
        for record in await self.events(aggregate_id, after):
            if not isinstance(record.message, Event):
                raise DecodeError(
                    record.stream,
                    record.entry_id,
                    f"{record.envelope.type!r} is not an Event; only events can be folded "
                    f"into {self.cls.__qualname__}",
                )
            state.apply(record.message)
            state.version = record.envelope.seq or state.version + 1
        return state

    async def _snapshot(self, aggregate_id: str) -> tuple[A | None, str]:
        part = self.keys.for_object(aggregate_id)
        key = part.stream(Kind.SNAPSHOTS)
        found = await script("latest").run(
            self.client, [part.index(Kind.SNAPSHOTS), key], [aggregate_id]
        )
        if not found:
            return None, "-"
        entry_id, raw = script_entry(found)
        envelope = parse(key, as_str(entry_id), raw)
        try:
            body: dict[str, Any] = orjson.loads(envelope.payload)
            return self.cls.model_validate(body["state"]), str(body["entry"])
        except (ValueError, KeyError, TypeError, ValidationError):
            # A snapshot of an older shape of the class: replaying the events is always right.
            return None, "-"

    async def snapshot(self, aggregate: A, *, keep: int = 1) -> str | None:
        """Store ``aggregate`` as a snapshot, keeping the newest ``keep`` per aggregate."""
        part = self.keys.for_object(aggregate.id)
        last = entries(
            await self.client.xrevrange(part.aggregate(aggregate.id), "+", "-", count=1)
        )
        if not last:
            return None
        entry = as_str(last[0][0])
        seq = int(last[0][1].get(b"seq", b"0"))
        if seq != aggregate.version:
            return None  # the aggregate moved on since this state was folded; skip
        envelope = Envelope(
            type=f"snapshot:{self.cls.__name__}",
            payload=orjson.dumps({"state": aggregate.model_dump(mode="json"), "entry": entry}),
            object_id=aggregate.id,
            fmt=JSON,
        )
        batch = Batch()
        batch.put(part, Kind.SNAPSHOTS, envelope, on_existing=OnExisting.PRUNE, keep=keep)
        entry_id, _ = (await batch.run(self.client))[0]
        return as_str(entry_id)
