"""The handling store: per (record, concern), where its handling stands, and how it got there.

Naos keeps "has this record been handled, by whom, how did it go" beside a stream, not in it:
a consumer reads the stream and writes only here. Each record has, per concern, a ``Status``
and an append-only history of ``HistoryEntry`` (time, status, action, details, tags, actor).
A status changes only along ``TRANSITIONS``; anything else is refused with
``InvalidTransition`` naming the current status, and writes nothing.

Where things live (all in the record's partition, so one script touches one slot): the status
in ``keys.handling_status(kind, concern)`` (a hash, record -> status), the history in
``keys.handling_history(kind, concern, record)`` (a list), and two kinds of switch in
``keys.handling_flags(kind)``: ``stream:<concern>`` (the stream is disabled for a concern: a
claim is BLOCKED) and ``<record>`` (the record is disabled for every concern: a claim is
SKIPPED). Switch changes are logged in a list beside the flags (``flags_log``). While a
record's flag is set every concern reports it DisabledForRecord; the concern it was disabled
through also stores that status (so its transitions are refused naming it), and enabling it
through any concern clears both.

A record is a message id; it lives in the partition of its object id (or of its message id
when it has none), the same partition a put wrote it to. Message ids are hex, so a record's
flag field never collides with a ``stream:`` one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import redis.asyncio
from redis.exceptions import ResponseError

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.domain.registry import TypeRegistry, registry
from streamcqrs.streams.commit import Batch
from streamcqrs.streams.envelope import Entry, Record, as_str, as_tags, now_ms, to_record
from streamcqrs.streams.errors import DecodeError, InvalidTransition
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys
from streamcqrs.streams.scripts import script
from streamcqrs.streams.statuses import (
    CLAIMABLE,
    DONE,
    STREAM_SWITCH,
    TRANSITIONS,
    Action,
    Composite,
    HistoryEntry,
    Status,
)
from streamcqrs.streams.stream import MAX_ID


def flags_log(keys: PartitionKeys, kind: Kind) -> str:
    """List beside the flags hash: history of stream and record switches (who, when, why)."""
    return f"{keys.handling_flags(kind)}:log"


def stream_flag(concern: str) -> str:
    """The flags-hash field of a concern's stream switch."""
    return f"stream:{concern}"


_SORTED_TRANSITIONS = {
    action: (sorted(allowed), to) for action, (allowed, to) in TRANSITIONS.items()
}
"""TRANSITIONS with each allowed-from set as a sorted list, as the commit script takes it."""


def transition(  # noqa: PLR0917 - positional order is the bots' contract
    batch: Batch,
    keys: PartitionKeys,
    kind: Kind,
    concern: str,
    record: str,
    action: Action,
    *,
    details: str = "",
    tags: Sequence[tuple[str, str]] = (),
    actor: str = "",
    at_ms: int | None = None,
) -> None:
    """Add ``record``'s status change to ``batch``, checked against ``TRANSITIONS`` when it runs.

    ``record`` is the message id and ``keys`` its partition. A bot puts COMPLETE, FAIL, RETRY
    or SELF_CANCEL into the commit that writes its outputs and acks its input, so the status
    changes with them or not at all. This checks the concern's status only; the stream and
    record switches are honoured by ``HandlingStore.claim``.
    """
    if action not in TRANSITIONS:
        raise ConfigurationError(
            f"{action.value} switches a whole stream, not a record; "
            "use HandlingStore.disable_stream/enable_stream"
        )
    allowed, to = _SORTED_TRANSITIONS[action]
    at = now_ms() if at_ms is None else at_ms
    entry = HistoryEntry(at, to, action, details, as_tags(tags), actor).to_bytes()
    batch.status(
        keys.handling_status(kind, concern),
        keys.handling_history(kind, concern, record),
        record,
        to.value,
        entry,
        allowed_from=allowed,
        concern=concern,
        action=action.value,
    )
    if action in (Action.DISABLE_RECORD, Action.ENABLE_RECORD):
        # The record-wide flag makes claims of every other concern skip the record too. A
        # record another concern disabled is DisabledForRecord here too: not disabled twice.
        once = [Status.AVAILABLE_BY_DEFAULT.value] if action is Action.DISABLE_RECORD else []
        _flag_change(batch, keys, kind, concern, record, action, at, details, tags, actor, once)


def _flag_change(  # noqa: PLR0917 - internal, mirrors transition()
    batch: Batch,
    keys: PartitionKeys,
    kind: Kind,
    concern: str,
    record: str,
    action: Action,
    at: int,
    details: str,
    tags: Sequence[tuple[str, str]],
    actor: str,
    allowed_from: Sequence[str] = (),
) -> None:
    """Set a record's disable flag, logged with the concern and record as tags."""
    to = TRANSITIONS[action][1]
    where = (("concern", concern), ("record", record))
    logged = HistoryEntry(at, to, action, details, (*as_tags(tags), *where), actor)
    batch.status(
        keys.handling_flags(kind), flags_log(keys, kind), record, to.value, logged.to_bytes(),
        allowed_from=allowed_from, concern=concern, action=action.value,
    )  # fmt: skip


class Claim(StrEnum):
    """The outcome of claiming one record."""

    CLAIMED = "CLAIMED"  # now Running for the claimer
    SKIPPED = "SKIPPED"  # not claimable (Completed, Running elsewhere, DisabledForRecord...)
    BLOCKED = "BLOCKED"  # the stream is disabled for the concern


@dataclass(frozen=True, slots=True)
class TryHandle:
    """What ``try_handle`` got: records now Running for the caller, or the stream blocked.

    Claimed entries stay pending in the consumer group: the caller acks each in the commit
    that records its outcome. Skipped entries were acked. ``invalid`` entries (undecodable)
    and blocked ones stay pending for the dead-letter path or a later take-over.
    """

    records: tuple[Record, ...] = ()
    blocked: bool = False
    skipped: tuple[tuple[str, Status], ...] = ()  # (message id, its status)
    invalid: tuple[DecodeError, ...] = ()


RecordRef = str | tuple[str, str]
"""A record as a message id, or (message id, object id) when it was put with an object id."""


class HandlingStore:
    """Claims and status changes of one (subsystem, stream kind, concern)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: SubsystemKeys,
        kind: Kind,
        concern: str,
        *,
        types: TypeRegistry = registry,
    ) -> None:
        if not concern or any(c in concern for c in "{}: \n"):
            raise ConfigurationError(
                f"concern {concern!r} must be non-empty and contain no braces, colons or spaces"
            )
        self.client = client
        self.keys = keys
        self.kind = kind
        self.concern = concern
        self.types = types

    def _part(self, record: str, object_id: str | None = None) -> PartitionKeys:
        return self.keys.for_object(object_id or record)

    # -- claims ------------------------------------------------------------------------------

    async def claim(
        self, records: Sequence[tuple[str, str]], *, actor: str = "", reclaim: bool = False
    ) -> list[tuple[Claim, Status]]:
        """Claim (message id, object id or "") records: one atomic round trip per partition.

        Per record: BLOCKED if the stream is disabled for the concern, SKIPPED (with the
        status) if the record is disabled or its status is not claimable, else CLAIMED:
        Running, with a history entry. ``reclaim`` also claims Running records (a take-over).
        """
        at = now_ms()
        by_part: dict[int, list[int]] = {}
        parts: dict[int, PartitionKeys] = {}
        for index, (record, object_id) in enumerate(records):
            part = self._part(record, object_id)
            parts[part.partition] = part
            by_part.setdefault(part.partition, []).append(index)
        claim_entry = HistoryEntry(at, Status.RUNNING, Action.CLAIM, actor=actor).to_bytes()
        reclaim_entry = HistoryEntry(at, Status.RUNNING, Action.RECLAIM, actor=actor).to_bytes()
        out: list[tuple[Claim, Status]] = [(Claim.SKIPPED, Status.AVAILABLE_BY_DEFAULT)] * len(
            records
        )
        for number, indexes in by_part.items():
            part = parts[number]
            keys = [part.handling_status(self.kind, self.concern), part.handling_flags(self.kind)]
            args: list[Any] = [self.concern, "1" if reclaim else "0", len(CLAIMABLE)]
            args += sorted(CLAIMABLE)
            for index in indexes:
                record = records[index][0]
                keys.append(part.handling_history(self.kind, self.concern, record))
                args += [record, claim_entry, reclaim_entry]
            replies = await script("claim").run(self.client, keys, args)
            for index, (outcome, status) in zip(indexes, replies, strict=True):
                out[index] = (Claim(as_str(outcome)), Status(as_str(status)))
        return out

    async def try_handle(
        self, group: str, consumer: str, *, count: int = 1, block_ms: int | None = None
    ) -> TryHandle:
        """Read new entries as ``consumer`` of ``group`` and claim them (Naos's TryHandle).

        Reads up to ``count`` entries per partition with XREADGROUP (creating the group at
        the start of the stream if missing), claims them, acks the ones skipped, and returns
        the claimed records decoded. A disabled stream returns ``blocked`` without reading.
        """
        if await self.stream_disabled():
            return TryHandle(blocked=True)
        streams: dict[Any, Any] = {p.stream(self.kind): ">" for p in self.keys.all()}
        try:
            reply = await self.client.xreadgroup(group, consumer, streams, count, block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._create_group(group)
            reply = await self.client.xreadgroup(group, consumer, streams, count, block_ms)
        found: list[Record] = []
        invalid: list[DecodeError] = []
        for key, batch in cast(list[tuple[bytes, list[Entry]]], reply or []):
            for entry_id, raw in batch:
                try:
                    found.append(to_record(as_str(key), entry_id, raw, self.types))
                except DecodeError as exc:
                    invalid.append(exc)
        results = await self.claim(
            [(r.envelope.message_id, r.object_id) for r in found], actor=consumer
        )
        claimed, skipped, blocked = [], [], False
        to_ack: dict[str, list[str]] = {}
        for record, (outcome, status) in zip(found, results, strict=True):
            if outcome is Claim.CLAIMED:
                claimed.append(record)
            elif outcome is Claim.BLOCKED:
                blocked = True  # left pending: handled once the stream is enabled again
            else:
                skipped.append((record.envelope.message_id, status))
                to_ack.setdefault(record.stream, []).append(record.entry_id)
        for stream, entry_ids in to_ack.items():
            await self.client.xack(stream, group, *entry_ids)
        return TryHandle(tuple(claimed), blocked, tuple(skipped), tuple(invalid))

    async def _create_group(self, group: str) -> None:
        for part in self.keys.all():
            try:
                await self.client.xgroup_create(part.stream(self.kind), group, "0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):  # another claimer created it first
                    raise

    # -- status changes ----------------------------------------------------------------------

    async def apply(
        self,
        record: str,
        action: Action,
        *,
        object_id: str | None = None,
        details: str = "",
        tags: Sequence[tuple[str, str]] = (),
        actor: str = "",
    ) -> None:
        """Apply one record action on its own (a one-op commit); InvalidTransition if refused."""
        batch = Batch()
        part = self._part(record, object_id)
        transition(batch, part, self.kind, self.concern, record, action,
                   details=details, tags=tags, actor=actor)  # fmt: skip
        await batch.run(self.client)

    async def complete(self, record: str, **kw: Any) -> None:
        """Running -> Completed."""
        await self.apply(record, Action.COMPLETE, **kw)

    async def fail(self, record: str, details: str = "", **kw: Any) -> None:
        """Running -> Failed, with what went wrong in ``details``."""
        await self.apply(record, Action.FAIL, details=details, **kw)

    async def retry(self, record: str, **kw: Any) -> None:
        """Running -> AvailableAfterFailure: an attempt failed and will be tried again."""
        await self.apply(record, Action.RETRY, **kw)

    async def self_cancel(self, record: str, **kw: Any) -> None:
        """Running -> AvailableAfterSelfCancellation: the handler gave it back (not yet)."""
        await self.apply(record, Action.SELF_CANCEL, **kw)

    async def external_cancel(self, record: str, **kw: Any) -> None:
        """Running -> AvailableAfterExternalCancellation: an operator took it back."""
        await self.apply(record, Action.EXTERNAL_CANCEL, **kw)

    async def reset_failed(self, record: str, **kw: Any) -> None:
        """Failed -> AvailableAfterFailure: handle it again."""
        await self.apply(record, Action.RESET_FAILED, **kw)

    async def reset_completed(self, record: str, **kw: Any) -> None:
        """Completed -> AvailableAfterCompletion: handle it again."""
        await self.apply(record, Action.RESET_COMPLETED, **kw)

    async def archive_failure(self, record: str, **kw: Any) -> None:
        """Failed -> ArchivedAfterFailure: give up on it, keeping the record of why."""
        await self.apply(record, Action.ARCHIVE_FAILURE, **kw)

    async def disable_record(self, record: str, **kw: Any) -> None:
        """Stop handling this record, for every concern (claims skip it)."""
        await self.apply(record, Action.DISABLE_RECORD, **kw)

    async def enable_record(
        self,
        record: str,
        *,
        object_id: str | None = None,
        details: str = "",
        tags: Sequence[tuple[str, str]] = (),
        actor: str = "",
    ) -> None:
        """DisabledForRecord -> AvailableByDefault, in every concern that disabled the record.

        While a record is disabled every concern sees it as DisabledForRecord, so any of
        them may enable it; the concerns that disabled it (found in the switch log) go back
        to AvailableByDefault together, with the flag, in one commit.
        """
        part = self._part(record, object_id)
        flag = await self.client.hget(part.handling_flags(self.kind), record)
        if flag is None or as_str(flag) != Status.DISABLED_FOR_RECORD:
            # Not disabled: refused, naming this concern's status.
            await self.apply(record, Action.ENABLE_RECORD, object_id=object_id, details=details,
                             tags=tags, actor=actor)  # fmt: skip
            return
        at = now_ms()
        entry = HistoryEntry(at, Status.AVAILABLE_BY_DEFAULT, Action.ENABLE_RECORD, details,
                             as_tags(tags), actor).to_bytes()  # fmt: skip
        batch = Batch()
        for concern in sorted({self.concern} | await self._disabled_by(part, record)):
            status = part.handling_status(self.kind, concern)
            stored = await self.client.hget(status, record)
            if stored is not None and as_str(stored) == Status.DISABLED_FOR_RECORD:
                batch.status(
                    status, part.handling_history(self.kind, concern, record),
                    record, Status.AVAILABLE_BY_DEFAULT.value, entry,
                    allowed_from=[Status.DISABLED_FOR_RECORD.value], concern=concern,
                    action=Action.ENABLE_RECORD.value,
                )  # fmt: skip
        # Checked: of two concurrent enables, one commits and the other is refused.
        _flag_change(batch, part, self.kind, self.concern, record, Action.ENABLE_RECORD, at,
                     details, tags, actor, [Status.DISABLED_FOR_RECORD.value])  # fmt: skip
        await batch.run(self.client)

    async def _disabled_by(self, keys: PartitionKeys, record: str) -> set[str]:
        """The concerns that disabled ``record``, from the partition's switch log."""
        raw = cast(list[bytes], await self.client.lrange(flags_log(keys, self.kind), 0, -1))
        concerns = set()
        for each in raw:
            entry = HistoryEntry.from_bytes(each)
            tags = dict(entry.tags)
            if entry.action is Action.DISABLE_RECORD and tags.get("record") == record:
                concerns.add(tags.get("concern", ""))
        return concerns - {""}

    async def disable_stream(self, *, details: str = "", actor: str = "") -> None:
        """Stop handling the whole stream for this concern: claims report BLOCKED."""
        await self._switch(Action.DISABLE_STREAM, details, actor)

    async def enable_stream(self, *, details: str = "", actor: str = "") -> None:
        """Handle the stream again for this concern."""
        await self._switch(Action.ENABLE_STREAM, details, actor)

    async def _switch(self, action: Action, details: str, actor: str) -> None:
        # One commit per partition (each is one slot). A partition already switched is
        # left as it is, so a switch cut short by a crash completes when run again; it is
        # refused only when every partition was already switched.
        allowed, to = STREAM_SWITCH[action]
        tags = (("concern", self.concern),)
        entry = HistoryEntry(now_ms(), to, action, details, tags, actor).to_bytes()
        refused: list[InvalidTransition] = []
        for part in self.keys.all():
            batch = Batch()
            batch.status(
                part.handling_flags(self.kind), flags_log(part, self.kind),
                stream_flag(self.concern), to.value, entry, allowed_from=sorted(allowed),
                concern=self.concern, action=action.value,
            )  # fmt: skip
            try:
                await batch.run(self.client)
            except InvalidTransition as exc:
                refused.append(exc)
        if len(refused) == self.keys.partitions:
            raise refused[0]

    # -- queries -----------------------------------------------------------------------------

    async def stream_disabled(self) -> bool:
        """True if the stream is disabled for this concern (in any partition)."""
        for part in self.keys.all():
            flag = await self.client.hget(part.handling_flags(self.kind), stream_flag(self.concern))
            if flag is not None and as_str(flag) == Status.DISABLED_FOR_STREAM:
                return True
        return False

    async def status(self, record: str, object_id: str | None = None) -> Status:
        """The record's status as a claim sees it: a disabled record or stream shows as such."""
        return (await self._statuses([(record, object_id or record)]))[0]

    async def history(self, record: str, object_id: str | None = None) -> list[HistoryEntry]:
        """The record's history for this concern, oldest first."""
        part = self._part(record, object_id)
        key = part.handling_history(self.kind, self.concern, record)
        raw = cast(list[bytes], await self.client.lrange(key, 0, -1))
        return [HistoryEntry.from_bytes(each) for each in raw]

    async def switch_history(self) -> list[HistoryEntry]:
        """Every stream and record switch change of this stream kind (all concerns), by time."""
        out: list[HistoryEntry] = []
        for part in self.keys.all():
            raw = cast(list[bytes], await self.client.lrange(flags_log(part, self.kind), 0, -1))
            out += [HistoryEntry.from_bytes(each) for each in raw]
        # A stream switch is logged once per partition: list each change once.
        return sorted(dict.fromkeys(out), key=lambda e: e.at_ms)

    async def composite(self, records: Iterable[RecordRef]) -> Composite:
        """The statuses of ``records`` (message ids, or (message id, object id) pairs)."""
        pairs = [(r, r) if isinstance(r, str) else (r[0], r[1] or r[0]) for r in records]
        return Composite.of(await self._statuses(pairs))

    async def composite_by_tag(
        self, name: str, value: str, since_ms: int | None = None, until_ms: int | None = None
    ) -> Composite:
        """The statuses of the records tagged name=value, put within [since_ms, until_ms]."""
        low = 0 if since_ms is None else since_ms
        high = MAX_ID >> 1 if until_ms is None else until_ms
        pairs: list[tuple[str, str]] = []
        for part in self.keys.all():
            index = part.tag_index(self.kind, name, value)
            ids = cast(list[bytes], await self.client.zrangebyscore(index, low, high))
            pipe = self.client.pipeline(transaction=False)
            for entry_id in ids:
                pipe.xrange(part.stream(self.kind), entry_id, entry_id, count=1)
            for found in await pipe.execute():
                for _entry_id, raw in cast(list[Entry], found or []):  # empty: trimmed since
                    message_id = as_str(raw[b"id"])
                    pairs.append((message_id, as_str(raw.get(b"obj", b"")) or message_id))
        return Composite.of(await self._statuses(pairs))

    async def _statuses(self, pairs: Sequence[tuple[str, str]]) -> list[Status]:
        """Effective statuses of (message id, partition key) pairs, in order."""
        by_part: dict[int, list[int]] = {}
        for index, (_record, key) in enumerate(pairs):
            by_part.setdefault(self.keys.for_object(key).partition, []).append(index)
        out = [Status.AVAILABLE_BY_DEFAULT] * len(pairs)
        for number, indexes in by_part.items():
            part = self.keys.partition(number)
            records = [pairs[i][0] for i in indexes]
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(part.handling_status(self.kind, self.concern), records)
            pipe.hmget(part.handling_flags(self.kind), [stream_flag(self.concern), *records])
            stored, (stream, *flags) = await pipe.execute()
            paused = stream is not None and as_str(stream) == Status.DISABLED_FOR_STREAM
            for index, status, flag in zip(indexes, stored, flags, strict=True):
                current = Status(as_str(status or Status.AVAILABLE_BY_DEFAULT.value))
                if flag is not None and as_str(flag) == Status.DISABLED_FOR_RECORD:
                    current = Status.DISABLED_FOR_RECORD
                elif paused and current in CLAIMABLE:
                    current = Status.DISABLED_FOR_STREAM
                out[index] = current
        return out


__all__ = [
    "CLAIMABLE",
    "DONE",
    "STREAM_SWITCH",
    "TRANSITIONS",
    "Action",
    "Claim",
    "Composite",
    "HandlingStore",
    "HistoryEntry",
    "RecordRef",
    "Status",
    "TryHandle",
    "transition",
]
