"""A subsystem: its six streams (plus dead letters) over P partitions, handed out by role."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

import redis
import redis.asyncio

from streamcqrs.domain.aggregate import Aggregate
from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.domain.registry import TypeRegistry, registry
from streamcqrs.streams._ids import to_ms
from streamcqrs.streams.aggregates import AggregateStore
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.stream import ReadOnlyStream, SyncWriteOnlyStream, WriteOnlyStream

A = TypeVar("A", bound=Aggregate)
KindName = Kind | str


def as_kind(kind: KindName) -> Kind:
    """A Kind from itself, its value (``"client-ops"``) or its name (``"client_operations"``)."""
    if isinstance(kind, Kind):
        return kind
    try:
        return Kind(kind)
    except ValueError:
        try:
            return Kind[kind.upper()]
        except KeyError:
            names = ", ".join(k.value for k in Kind)
            raise ConfigurationError(f"unknown stream kind {kind!r}; one of: {names}") from None


def parse_stream(spec: str) -> tuple[str, Kind]:
    """``"subsystem/kind"`` (``"email/client-ops"``) as (subsystem, Kind).

    The one reader of that form, for handler declarations and the command line alike;
    ConfigurationError saying the form, the kinds, or what a subsystem name may hold.
    """
    subsystem, sep, kind = spec.partition("/")
    if not sep or not subsystem:
        raise ConfigurationError(
            f"stream {spec!r} must be written SUBSYSTEM/KIND, e.g. notification/client-ops"
        )
    return SubsystemKeys(subsystem).subsystem, as_kind(kind)


class Subsystem:
    """The streams of one subsystem (``notification``, ``email``) on one server.

    >>> notification = Subsystem("notification", client)
    >>> ops = notification.writer("client-ops")   # write-only: put, next_id
    >>> views = notification.reader("views")      # read-only: latest_raw, by_tag, read
    """

    def __init__(
        self,
        name: str,
        client: redis.asyncio.Redis,
        *,
        partitions: int = 1,
        types: TypeRegistry = registry,
        sync_client: redis.Redis | None = None,
    ) -> None:
        self.keys = SubsystemKeys(name, partitions)
        for given in (client, sync_client):
            # Entries are read as bytes (payloads are msgpack): a decoding client would fail
            # every read later with a confusing "missing envelope fields".
            if given is not None and given.get_connection_kwargs().get("decode_responses"):
                raise ConfigurationError(
                    f"subsystem {name!r} needs clients without decode_responses=True; "
                    "entries hold binary payloads"
                )
        self.client = client
        self.sync_client = sync_client
        self.types = types

    @property
    def name(self) -> str:
        """The subsystem's name, the first part of every key's hash tag."""
        return self.keys.subsystem

    def writer(self, kind: KindName) -> WriteOnlyStream:
        """A write-only handle on one stream kind."""
        return WriteOnlyStream(self.keys, as_kind(kind), self.client, self.types)

    def reader(self, kind: KindName) -> ReadOnlyStream:
        """A read-only handle on one stream kind."""
        return ReadOnlyStream(self.keys, as_kind(kind), self.client, self.types)

    def sync_writer(self, kind: KindName) -> SyncWriteOnlyStream:
        """A write-only handle for synchronous code; needs ``sync_client``."""
        if self.sync_client is None:
            raise ConfigurationError(
                f"subsystem {self.name!r} has no sync client; pass sync_client= to Subsystem"
            )
        return SyncWriteOnlyStream(self.writer(kind), self.sync_client)

    def aggregates(self, cls: type[A]) -> AggregateStore[A]:
        """Load and append to aggregates of ``cls`` in this subsystem."""
        return AggregateStore(self.keys, cls, self.client, types=self.types)

    async def snapshot(self, cls: type[A], aggregate_id: str | int) -> A | None:
        """The latest snapshot of aggregate ``aggregate_id`` as a ``cls``, or None.

        Reads the snapshots stream only (an API user may, with ``streamcqrs acl
        --api-snapshots``): the state at the snapshot's version, typed.
        """
        return await self.aggregates(cls).latest_snapshot(str(aggregate_id))

    async def trim(
        self,
        kind: KindName,
        *,
        maxlen: int | None = None,
        max_age_ms: int | None = None,
        older_than: datetime | None = None,
    ) -> int:
        """Drop the oldest entries beyond ``maxlen`` or older than an age; return how many.

        ``maxlen`` applies to each partition: a stream of P partitions keeps up to P * maxlen.

        Indexes (latest-by-id, tags) heal themselves as trimmed entries are met.
        """
        stream_kind = as_kind(kind)
        removed = 0
        for part in self.keys.all():
            key = part.stream(stream_kind)
            if maxlen is not None:
                removed += int(await self.client.xtrim(key, maxlen=maxlen, approximate=False))
            if max_age_ms is not None or older_than is not None:
                # TIME is (seconds, microseconds): both parts, or the cutoff rounds down to
                # the second and keeps entries up to a second older than asked.
                seconds, micros = await self.client.time()
                server_ms = int(seconds) * 1000 + int(micros) // 1000
                cutoff = to_ms(older_than, server_ms - (max_age_ms or 0))
                removed += int(await self.client.xtrim(key, minid=f"{cutoff}-0", approximate=False))
        return removed
