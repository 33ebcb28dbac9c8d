"""The streams of a subsystem, handed out in the role a caller asked for.

Naos separates who may write a stream from who may read it. ``WriteOnlyStream`` can put and
hand out ids and nothing else; ``ReadOnlyStream`` can read, look up the latest record of an
id, read by time range or by tag, and subscribe, and nothing else. Asking either for the other
role's work raises ``RoleError`` naming what to ask for instead. (The server enforces the same
split with ACL users when credentials are configured.)
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, cast

import redis
import redis.asyncio
from pydantic import BaseModel
from redis.typing import KeyT, StreamIdT

from streamcqrs.domain.messages import Message
from streamcqrs.domain.policy import ExecutionPolicy
from streamcqrs.domain.registry import TypeRegistry, registry
from streamcqrs.streams._ids import MAX_ID, entry_key, to_ms
from streamcqrs.streams.commit import Commit, OnExisting
from streamcqrs.streams.connection import is_cluster
from streamcqrs.streams.durable import run_durable, run_durable_sync
from streamcqrs.streams.envelope import (
    Entry,
    Envelope,
    Record,
    Tags,
    as_str,
    as_tags,
    encode,
    encode_view,
    entries,
    script_entry,
    to_record,
)
from streamcqrs.streams.errors import RoleError
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.scripts import script
from streamcqrs.streams.tracing import put_span

_WRITE_ONLY = frozenset({"put", "put_view", "next_id"})
_READ_ONLY = frozenset({"read", "latest", "latest_raw", "by_tag", "subscribe", "length"})


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a put did: the entry id (or the existing one), whether it wrote, and the message.

    ``message_id`` is the id of the message this put wrote; it is empty when a SKIP put found
    an existing record and wrote nothing (``latest(object_id)`` gives that record).
    """

    entry_id: str
    written: bool
    object_id: str
    message_id: str = ""


class _Stream:
    """A logical stream (one kind of one subsystem) over its partitions."""

    role = "stream"

    def __init__(
        self,
        keys: SubsystemKeys,
        kind: Kind,
        client: redis.asyncio.Redis,
        types: TypeRegistry = registry,
    ) -> None:
        self.keys = keys
        self.kind = kind
        self.client = client
        self.types = types

    @property
    def name(self) -> str:
        """``subsystem/kind``, as it appears in logs and errors."""
        return f"{self.keys.subsystem}/{self.kind}"

    def _refuse(self, action: str, instead: str) -> NoReturn:
        raise RoleError(
            f"{self.name} was handed out {self.role}: it cannot {action}; "
            f"ask the subsystem for {instead}"
        )

    def __getattr__(self, name: str) -> Any:
        # Only called for names the class lacks: the other role's methods land here.
        if name in _WRITE_ONLY and self.role != "write-only":
            self._refuse(name, f"writer({self.kind.value!r}) to write")
        if name in _READ_ONLY and self.role != "read-only":
            self._refuse(name, f"reader({self.kind.value!r}) to read")
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} partitions={self.keys.partitions}>"


class WriteOnlyStream(_Stream):
    """Put records into a stream and hand out ids for them; nothing else."""

    role = "write-only"

    def envelope(
        self,
        message: Message,
        *,
        object_id: str | int | None = None,
        tags: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        correlation_id: str = "",
        causation_id: str = "",
        message_id: str | None = None,
        trace: str = "",
    ) -> Envelope:
        """Wrap ``message`` for this stream (used by put; handy for batching)."""
        return encode(
            message,
            object_id="" if object_id is None else str(object_id),
            tags=as_tags(tags),
            correlation_id=correlation_id,
            causation_id=causation_id,
            message_id=message_id,
            types=self.types,
            trace=trace,
        )

    async def put(
        self,
        message: Message,
        *,
        object_id: str | int | None = None,
        tags: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        on_existing: OnExisting = OnExisting.WRITE,
        keep: int = 1,
        correlation_id: str = "",
        causation_id: str = "",
        message_id: str | None = None,
        execute_earliest: datetime | int | None = None,
        policy: ExecutionPolicy | None = None,
        durable: bool | int = False,
    ) -> PutResult:
        """Put a message; with ``execute_earliest`` it enters the stream only when due.

        ``policy`` (default: the operation class's ``policy``) travels with the entry. With
        tracing on (``streams.tracing``), the put is a span and the entry names it.
        ``durable`` (True, or a number of replicas): return only once that many replicas
        have the record (WAIT), else raise ``NotDurable``; see ``streams.durable``.
        """
        with put_span(self.name) as span:
            envelope = self.envelope(
                message,
                object_id=object_id,
                tags=tags,
                correlation_id=correlation_id,
                causation_id=causation_id,
                message_id=message_id,
                trace=span.traceparent if span else "",
            )
            if span:
                span.named(envelope)
            packed = ExecutionPolicy.packed_for(message, policy)
            commit = self._put_commit(envelope, on_existing, keep, execute_earliest, packed)
            if durable:
                replies = await run_durable(self.client, commit, replicas=int(durable))
                return _result(envelope, replies[0])
            return _result(envelope, (await commit.run(self.client))[0])

    def _put_commit(
        self,
        envelope: Envelope,
        on_existing: OnExisting,
        keep: int,
        execute_earliest: datetime | int | None = None,
        policy: bytes = b"",
    ) -> Commit:
        """The one-intent commit of a put (parked until due with ``execute_earliest``)."""
        due = None if execute_earliest is None else to_ms(execute_earliest, 0)
        commit = Commit()
        commit.put(self.keys, self.kind, envelope, on_existing=on_existing, keep=keep, due_ms=due,
                   policy=policy)  # fmt: skip
        return commit

    def view_envelope(
        self,
        object_id: str | int,
        view: BaseModel | Mapping[str, Any] | bytes,
        *,
        type_name: str = "view",
        tags: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
    ) -> Envelope:
        """Wrap a view (model, mapping or ready JSON bytes) for this stream."""
        return encode_view(view, type_name=type_name, object_id=str(object_id), tags=as_tags(tags))

    async def put_view(
        self,
        object_id: str | int,
        view: BaseModel | Mapping[str, Any] | bytes,
        *,
        type_name: str = "view",
        tags: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        keep: int = 1,
    ) -> PutResult:
        """Store a view as JSON bytes, keeping the newest ``keep`` per id (0 keeps all)."""
        envelope = self.view_envelope(object_id, view, type_name=type_name, tags=tags)
        commit = self._put_commit(envelope, OnExisting.for_view(keep), keep)
        return _result(envelope, (await commit.run(self.client))[0])

    async def next_id(self) -> int:
        """A unique, increasing 64-bit id for a record of this stream (a tracking id)."""
        # INCR, not redis-py's incr() (which sends INCRBY): client users may not INCRBY.
        sequence = self.keys.partition(0).sequence(self.kind)
        return int(await self.client.execute_command("INCR", sequence))  # type: ignore[no-untyped-call]



def _result(envelope: Envelope, reply: Any) -> PutResult:
    if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], int):
        entry_id, written = reply
        message_id = envelope.message_id if written else ""
        return PutResult(as_str(entry_id), bool(written), envelope.object_id, message_id)
    # Parked in the delayed set: no entry id until the mover puts it in the stream.
    return PutResult("", True, envelope.object_id, envelope.message_id)


class ReadOnlyStream(_Stream):
    """Read a stream: by time range, latest by id, by tag, or live; nothing else."""

    role = "read-only"

    def _to_record(self, key: str, entry_id: bytes, raw: Mapping[bytes, bytes]) -> Record:
        return to_record(key, entry_id, raw, self.types)

    async def read(
        self,
        since: datetime | int | None = None,
        until: datetime | int | None = None,
        *,
        count: int | None = None,
    ) -> list[Record]:
        """Records written in [since, until] (datetimes or epoch ms), oldest first."""
        low, high = f"{to_ms(since, 0)}-0", f"{to_ms(until, MAX_ID >> 1)}-{MAX_ID}"
        per_partition = []
        for part in self.keys.all():
            key = part.stream(self.kind)
            found = entries(await self.client.xrange(key, low, high, count=count))
            per_partition.append([(eid, key, raw) for eid, raw in found])
        merged = heapq.merge(*per_partition, key=lambda e: entry_key(e[0]))
        out = [self._to_record(key, eid, raw) for eid, key, raw in merged]
        return out[:count] if count is not None else out

    async def _latest_entry(
        self, object_id: str | int
    ) -> tuple[str, bytes, dict[bytes, bytes]] | None:
        part = self.keys.for_object(str(object_id))
        key = part.stream(self.kind)
        found = await script("latest").run(
            self.client, [part.index(self.kind), key], [str(object_id)]
        )
        if not found:
            return None
        entry_id, raw = script_entry(found)
        return key, entry_id, raw

    async def latest(self, object_id: str | int) -> Record | None:
        """The newest record put with this object id, or None."""
        found = await self._latest_entry(object_id)
        return None if found is None else self._to_record(*found)

    async def latest_raw(self, object_id: str | int) -> bytes | None:
        """The newest record's payload bytes as stored (a view's JSON, to return as it is)."""
        found = await self._latest_entry(object_id)
        return None if found is None else found[2].get(b"data")

    async def by_tag(
        self,
        name: str,
        value: str,
        since: datetime | int | None = None,
        until: datetime | int | None = None,
        *,
        limit: int = 0,
        newest_first: bool = False,
    ) -> list[Record]:
        """Records tagged name=value, written in [since, until]; ``limit`` 0 means all."""
        low, high = to_ms(since, 0), to_ms(until, MAX_ID >> 1)
        per_partition = []
        for part in self.keys.all():
            key = part.stream(self.kind)
            found = await script("by_tag").run(
                self.client,
                [part.tag_index(self.kind, name, value), key],
                [low, high, limit, "1" if newest_first else "0"],
            )
            per_partition.append([(key, *script_entry(each)) for each in found])
        merged = heapq.merge(
            *per_partition, key=lambda e: entry_key(e[1]), reverse=newest_first
        )
        out = [self._to_record(key, eid, raw) for key, eid, raw in merged]
        return out[:limit] if limit else out

    async def length(self) -> int:
        """Number of entries over all partitions."""
        total = 0
        for part in self.keys.all():
            total += int(await self.client.xlen(part.stream(self.kind)))
        return total

    async def subscribe(
        self, *, after: str = "$", block_ms: int = 1000, idle_limit: int | None = None
    ) -> AsyncGenerator[Record, None]:
        """Yield records as they are written (after ``after``: "$" new only, "0" from start).

        Stops after ``idle_limit`` consecutive empty blocks, if given; otherwise runs until the
        consumer stops iterating.
        """
        cursors: dict[KeyT, StreamIdT] = {}
        for part in self.keys.all():
            key = part.stream(self.kind)
            # Pin "$" to each partition's last id now: left as "$", a partition that stays
            # quiet while another answers would skip whatever it got in between two reads.
            last = entries(await self.client.xrevrange(key, "+", "-", count=1))
            cursors[key] = (as_str(last[0][0]) if last else "0-0") if after == "$" else after
        idle = 0
        # On a cluster the partitions live in different slots and one XREAD may not name
        # them all: each gets a blocking read of its own, and whichever answers first is
        # yielded while the others go on waiting.
        apart = is_cluster(self.client) and len(cursors) > 1
        reads: dict[KeyT, asyncio.Task[Any]] = {}
        try:
            while idle_limit is None or idle < idle_limit:
                reply: Any
                if apart:
                    reply = await self._read_apart(reads, cursors, block_ms)
                else:
                    reply = await self.client.xread(cursors, block=block_ms)
                if not reply:
                    idle += 1
                    await asyncio.sleep(0)
                    continue
                idle = 0
                for reply_key, found in cast(list[tuple[bytes, list[Entry]]], reply):
                    stream_key = as_str(reply_key)
                    for eid, raw in found:
                        cursors[stream_key] = as_str(eid)
                        yield self._to_record(stream_key, eid, raw)
        finally:
            for task in reads.values():
                task.cancel()


    async def _read_apart(
        self, reads: dict[KeyT, asyncio.Task[Any]], cursors: dict[KeyT, StreamIdT], block_ms: int
    ) -> list[Any]:
        """A blocking XREAD per partition (``reads`` keeps those still waiting); what the
        first ones to answer found."""
        for name, cursor in cursors.items():
            if name not in reads:
                reads[name] = asyncio.ensure_future(
                    self.client.xread({name: cursor}, block=block_ms)
                )
        done, _ = await asyncio.wait(reads.values(), return_when=asyncio.FIRST_COMPLETED)
        found: list[Any] = []
        for name, task in list(reads.items()):
            if task in done:
                del reads[name]
                found += task.result() or []
        return found


class SyncWriteOnlyStream:
    """A write-only stream for synchronous producers (scripts, Django/Flask views)."""

    role = "write-only"

    def __init__(self, inner: WriteOnlyStream, client: redis.Redis) -> None:
        self._inner = inner
        self.client = client

    def put(
        self,
        message: Message,
        *,
        object_id: str | int | None = None,
        tags: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        on_existing: OnExisting = OnExisting.WRITE,
        keep: int = 1,
        correlation_id: str = "",
        causation_id: str = "",
        message_id: str | None = None,
        execute_earliest: datetime | int | None = None,
        policy: ExecutionPolicy | None = None,
        durable: bool | int = False,
    ) -> PutResult:
        """Put a message (see ``WriteOnlyStream.put``)."""
        inner = self._inner
        with put_span(inner.name) as span:
            envelope = inner.envelope(
                message,
                object_id=object_id,
                tags=tags,
                correlation_id=correlation_id,
                causation_id=causation_id,
                message_id=message_id,
                trace=span.traceparent if span else "",
            )
            if span:
                span.named(envelope)
            packed = ExecutionPolicy.packed_for(message, policy)
            commit = inner._put_commit(envelope, on_existing, keep, execute_earliest, packed)
            if durable:
                replies = run_durable_sync(self.client, commit, replicas=int(durable))
                return _result(envelope, replies[0])
            return _result(envelope, commit.run_sync(self.client)[0])

    def put_view(
        self,
        object_id: str | int,
        view: BaseModel | Mapping[str, Any] | bytes,
        *,
        type_name: str = "view",
        tags: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        keep: int = 1,
    ) -> PutResult:
        """Store a view (see ``WriteOnlyStream.put_view``)."""
        envelope = self._inner.view_envelope(object_id, view, type_name=type_name, tags=tags)
        commit = self._inner._put_commit(envelope, OnExisting.for_view(keep), keep)
        return _result(envelope, commit.run_sync(self.client)[0])

    def next_id(self) -> int:
        """A unique, increasing 64-bit id (see ``WriteOnlyStream.next_id``)."""
        inner = self._inner
        sequence = inner.keys.partition(0).sequence(inner.kind)
        return int(self.client.execute_command("INCR", sequence))  # type: ignore[no-untyped-call]

    def __getattr__(self, name: str) -> Any:
        # The role checks (and the refusals they give) are the async stream's.
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<SyncWriteOnlyStream {self._inner.name} partitions={self._inner.keys.partitions}>"


__all__ = ["PutResult", "ReadOnlyStream", "SyncWriteOnlyStream", "Tags", "WriteOnlyStream"]
