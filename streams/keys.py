"""The key scheme: every key of one partition of one subsystem shares one hash tag.

A logical stream (say ``notification`` events) has P partitions. A record goes to partition
``crc32(key) % P``, where the key is its object id (the aggregate id), so one object's records
stay in order in one partition. Every key of partition p of subsystem s is prefixed with the
hash tag ``{s.p}``: an atomic script over one partition touches one Redis Cluster slot.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache

from streamcqrs.domain.errors import ConfigurationError


class Kind(StrEnum):
    """The six stream kinds of a subsystem, and the dead-letter stream beside them."""

    CLIENT_OPERATIONS = "client-ops"
    INTERNAL_OPERATIONS = "internal-ops"
    SAGAS = "sagas"
    EVENTS = "events"
    VIEWS = "views"
    SNAPSHOTS = "snapshots"
    DEAD_LETTERS = "dead"


def partition_of(key: str, partitions: int) -> int:
    """The partition a record with this key belongs to: stable across processes and hosts."""
    if partitions == 1:
        return 0
    return zlib.crc32(key.encode()) % partitions


@lru_cache(maxsize=4096)  # on every key a bot builds; a refusal raises, so is never cached
def _check_name(what: str, name: str) -> str:
    if not name or any(c in name for c in "{}: \n"):
        raise ConfigurationError(
            f"{what} {name!r} must be non-empty and contain no braces, colons or spaces"
        )
    return name


def check_concern(concern: str) -> str:
    """Refuse a concern name that could make two concerns' handling keys collide."""
    return _check_name("concern", concern)


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """Every key of one partition of one subsystem."""

    subsystem: str
    partition: int
    tag: str = field(init=False, repr=False, compare=False)
    """The Redis Cluster hash tag shared by all keys of this partition, ``{subsystem.p}``."""

    def __post_init__(self) -> None:
        # Made once: every key of the partition starts with it, on the bot's hot path.
        object.__setattr__(self, "tag", f"{{{self.subsystem}.{self.partition}}}")

    def stream(self, kind: Kind) -> str:
        """The stream key of one kind."""
        return f"{self.tag}:{kind}"

    def index(self, kind: Kind) -> str:
        """Hash: object id -> entry id of that object's latest record."""
        return f"{self.tag}:{kind}:latest"

    def by_object(self, kind: Kind, object_id: str) -> str:
        """Sorted set of one object's entry ids, kept when puts prune to the newest N."""
        return f"{self.tag}:{kind}:obj:{object_id}"

    def tag_index(self, kind: Kind, name: str, value: str) -> str:
        """Sorted set of entry ids carrying tag name=value, scored by entry time (ms)."""
        if not name or "=" in name:
            # The key splits at the first "=": a name holding one would share keys with
            # another (name, value) pair.
            raise ConfigurationError(f"tag name {name!r} must be non-empty and contain no '='")
        return f"{self.tag}:{kind}:tag:{name}={value}"

    def recent_puts(self, kind: Kind, minute: int) -> str:
        """Hash: message id -> entry id of the standalone puts of one minute (expires).

        How a put re-sent after a lost reply knows it was written already.
        """
        return f"{self.tag}:{kind}:recent:{minute}"

    def sequence(self, kind: Kind) -> str:
        """Counter behind ``next_id`` (only partition 0's is used)."""
        return f"{self.tag}:{kind}:seq"

    def idempotency(self, kind: Kind, key_digest: str) -> str:
        """String: the tracking id an idempotency key stands for (``streams.client``; expires)."""
        return f"{self.tag}:{kind}:idem:{key_digest}"

    def tracking(self, kind: Kind, tracking_id: int | str) -> str:
        """String: the entry a tracking id's operation was put as (``streams.client``; expires).

        Written once, by the put's own script, so it also guards that put against a second.
        """
        return f"{self.tag}:{kind}:track:{tracking_id}"

    def aggregate(self, aggregate_id: str) -> str:
        """One aggregate's own list of events (packed), behind an optional compaction header."""
        return f"{self.tag}:agg:{aggregate_id}"

    def delayed(self, kind: Kind) -> str:
        """Sorted set of envelopes due later, scored by due time (ms)."""
        return f"{self.tag}:{kind}:delayed"

    def handling_status(self, kind: Kind, concern: str) -> str:
        """Hash: record id -> its handling status for one concern, then its history."""
        return f"{self.tag}:{kind}:handling:{check_concern(concern)}:status"

    def order_turns(self, kind: Kind, concern: str) -> str:
        """Hash: object id -> the record holding its turn, for a concern handled in order."""
        return f"{self.tag}:{kind}:order:{check_concern(concern)}:turns"

    def order_waiting(self, kind: Kind, concern: str) -> str:
        """Stream: entries parked until their object's turn comes (a concern handled in order)."""
        return f"{self.tag}:{kind}:order:{check_concern(concern)}:waiting"

    def order_queue(self, kind: Kind, concern: str) -> str:
        """Sorted set, by lex: one member per parked entry, its object's oldest first."""
        return f"{self.tag}:{kind}:order:{check_concern(concern)}:queue"

    def handling_flags(self, kind: Kind) -> str:
        """Hash of stream-wide switches (disabled concerns) and per-record disables."""
        return f"{self.tag}:{kind}:handling:flags"

    def handling_flags_log(self, kind: Kind) -> str:
        """List beside the flags: every stream and record switch change (who, when, why)."""
        return f"{self.tag}:{kind}:handling:flags:log"

    def stream_switch(self, concern: str) -> str:
        """The flags-hash field of a concern's stream switch."""
        return f"stream:{check_concern(concern)}"

    @property
    def outbox(self) -> str:
        """Stream of outputs bound for another slot, for the cluster relay to forward."""
        return f"{self.tag}:outbox"

    def lease(self, name: str) -> str:
        """String: the token of whoever holds exclusive access ``name`` (expires)."""
        return f"{self.tag}:lease:{_check_name('lease name', name)}"

    def receipt(self, ticket_id: str) -> str:
        """Hash: one ticket's receipt (submitted, due, done, error; expires after keeping)."""
        return f"{self.tag}:receipt:{ticket_id}"

    @property
    def schedules(self) -> str:
        """Hash: schedule name -> the last due time (ms) an operation was put for."""
        return f"{self.tag}:schedules"

    def cleaned(self, kind: Kind) -> str:
        """Hash: what the cleaner last removed from this stream (so ``show`` can say so)."""
        return f"{self.tag}:{kind}:cleaned"
    @property
    def outbox_lease(self) -> str:
        """String: which relay forwards this partition's outbox now (expires)."""
        return f"{self.tag}:outbox:lease"

    def forwarded(self, period: int) -> str:
        """Hash: message ids forwarded into this partition in one period (expires)."""
        return f"{self.tag}:forwarded:{period}"


@dataclass(frozen=True, slots=True)
class SubsystemKeys:
    """The key scheme of one subsystem over its partitions."""

    subsystem: str
    partitions: int = 1

    def __post_init__(self) -> None:
        _check_name("subsystem name", self.subsystem)
        if self.partitions < 1:
            raise ConfigurationError(f"partitions must be >= 1, got {self.partitions}")

    def partition(self, number: int) -> PartitionKeys:
        """The keys of partition ``number``."""
        return PartitionKeys(self.subsystem, number)

    def for_object(self, object_id: str) -> PartitionKeys:
        """The keys of the partition that holds ``object_id``'s records."""
        return PartitionKeys(self.subsystem, partition_of(object_id, self.partitions))

    def all(self) -> list[PartitionKeys]:
        """The keys of every partition, in order."""
        return [PartitionKeys(self.subsystem, p) for p in range(self.partitions)]


def cleaner_lease(app: str) -> str:
    """String: the token of the bot (or ``streamcqrs clean``) leading ``app``'s cleaner."""
    return f"streamcqrs:cleaner:{app}"


def cleaner_state(app: str) -> str:
    """Hash: when ``app``'s last cleaner cycle started and finished, and what it removed."""
    return f"{cleaner_lease(app)}:state"
