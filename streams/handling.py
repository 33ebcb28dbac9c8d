"""The handling store: per (record, concern), where its handling stands, and how it got there.

Naos keeps "has this record been handled, by whom, how did it go" beside a stream, not in it:
a consumer reads the stream and writes only here. Each record has, per concern, a ``Status``
and an append-only history of ``HistoryEntry`` (time, status, action, details, tags, actor).
A status changes only along the transition table; anything else is refused with
``InvalidTransition`` naming the current status, and writes nothing.

Where things live (all in the record's partition, so one script touches one slot): per
(kind, concern) one hash, record -> ``<status>|<history>`` (``statuses.decode_stored``), so a
record costs one hash field, not keys of its own; and per kind the switches in
``keys.handling_flags(kind)``: ``stream:<concern>`` (the stream is disabled for a concern:
bots leave its entries pending) and ``<record>`` (the record is disabled for every concern:
bots skip it), each change logged in ``keys.handling_flags_log(kind)``. While a record's flag
is set every concern reports it DisabledForRecord; the concern it was disabled through also
stores that status, and enabling it through any concern clears both.

Bots do not store Running: the consumer group's pending entry says who handles a record, so
their outcome (complete, retry, self-cancel, fail) is the one status write of an attempt, made
in the commit that acks the input; its history entry keeps when the attempt started.

A record is a message id; it lives in the partition of its object id (or of its message id
when it has none), the same partition a put wrote it to.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import redis.asyncio

from streamcqrs.domain.registry import TypeRegistry, registry
from streamcqrs.streams._ids import MAX_ID, now_ms
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.envelope import Entry, as_str, as_tags
from streamcqrs.streams.errors import InvalidTransition
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys, check_concern
from streamcqrs.streams.statuses import (
    CLAIMABLE,
    STREAM_SWITCH,
    TRANSITIONS,
    Action,
    Composite,
    HistoryEntry,
    Status,
    decode_stored,
)

RecordRef = str | tuple[str, str]
"""A record as a message id, or (message id, object id) when it was put with an object id."""


class HandlingStore:
    """Status changes and queries of one (subsystem, stream kind, concern)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: SubsystemKeys,
        kind: Kind,
        concern: str,
        *,
        types: TypeRegistry = registry,
    ) -> None:
        self.client = client
        self.keys = keys
        self.kind = kind
        self.concern = check_concern(concern)
        self.types = types

    def _part(self, record: str, object_id: str | None = None) -> PartitionKeys:
        return self.keys.for_object(object_id or record)

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
        """Apply one record action on its own (a one-intent commit); InvalidTransition if refused.

        Sent twice (redis-py re-sends a command after a dropped connection), the second run
        recognises its own history entry and succeeds without writing again.
        """
        commit = Commit()
        part = self._part(record, object_id)
        if action in (Action.DISABLE_RECORD, Action.ENABLE_RECORD):
            # The record-wide flag makes every other concern's bots skip the record too. A
            # record another concern disabled is DisabledForRecord here too: not disabled twice.
            once = [Status.AVAILABLE_BY_DEFAULT.value] if action is Action.DISABLE_RECORD else []
            self._flag(commit, part, record, action, details, tags, actor, once)
        commit.settle(action, details=details, tags=tags, actor=actor,
                      record=(part, self.kind, self.concern, record))  # fmt: skip
        await commit.run(self.client)

    async def complete(
        self, record: str, details: str = "", *, object_id: str | None = None,
        tags: Sequence[tuple[str, str]] = (), actor: str = "",
    ) -> None:  # fmt: skip
        """-> Completed: the record is handled."""
        await self.apply(
            record, Action.COMPLETE, object_id=object_id, details=details, tags=tags, actor=actor
        )

    async def fail(
        self, record: str, details: str = "", *, object_id: str | None = None,
        tags: Sequence[tuple[str, str]] = (), actor: str = "",
    ) -> None:  # fmt: skip
        """-> Failed, with what went wrong in ``details``."""
        await self.apply(
            record, Action.FAIL, object_id=object_id, details=details, tags=tags, actor=actor
        )

    async def retry(
        self, record: str, details: str = "", *, object_id: str | None = None,
        tags: Sequence[tuple[str, str]] = (), actor: str = "",
    ) -> None:  # fmt: skip
        """-> AvailableAfterFailure: an attempt failed and will be tried again."""
        await self.apply(
            record, Action.RETRY, object_id=object_id, details=details, tags=tags, actor=actor
        )

    async def self_cancel(
        self, record: str, details: str = "", *, object_id: str | None = None,
        tags: Sequence[tuple[str, str]] = (), actor: str = "",
    ) -> None:  # fmt: skip
        """-> AvailableAfterSelfCancellation: the handler gave it back (not yet)."""
        await self.apply(
            record, Action.SELF_CANCEL, object_id=object_id, details=details, tags=tags, actor=actor
        )

    async def external_cancel(
        self, record: str, details: str = "", *, object_id: str | None = None,
        tags: Sequence[tuple[str, str]] = (), actor: str = "",
    ) -> None:  # fmt: skip
        """-> AvailableAfterExternalCancellation: an operator took it back."""
        await self.apply(
            record,
            Action.EXTERNAL_CANCEL,
            object_id=object_id,
            details=details,
            tags=tags,
            actor=actor,
        )

    async def reset_failed(
        self, record: str, details: str = "", *, object_id: str | None = None,
        tags: Sequence[tuple[str, str]] = (), actor: str = "",
    ) -> None:  # fmt: skip
        """Failed -> AvailableAfterFailure: handle it again."""
        await self.apply(
            record,
            Action.RESET_FAILED,
            object_id=object_id,
            details=details,
            tags=tags,
            actor=actor,
        )

    async def reset_completed(
        self, record: str, details: str = "", *, object_id: str | None = None,
        tags: Sequence[tuple[str, str]] = (), actor: str = "",
    ) -> None:  # fmt: skip
        """Completed -> AvailableAfterCompletion: handle it again."""
        await self.apply(
            record,
            Action.RESET_COMPLETED,
            object_id=object_id,
            details=details,
            tags=tags,
            actor=actor,
        )

    async def archive_failure(
        self, record: str, details: str = "", *, object_id: str | None = None,
        tags: Sequence[tuple[str, str]] = (), actor: str = "",
    ) -> None:  # fmt: skip
        """Failed -> ArchivedAfterFailure: give up on it, keeping the record of why."""
        await self.apply(
            record,
            Action.ARCHIVE_FAILURE,
            object_id=object_id,
            details=details,
            tags=tags,
            actor=actor,
        )

    async def disable_record(
        self, record: str, details: str = "", *, object_id: str | None = None,
        tags: Sequence[tuple[str, str]] = (), actor: str = "",
    ) -> None:  # fmt: skip
        """Stop handling this record, for every concern (bots skip it)."""
        await self.apply(
            record,
            Action.DISABLE_RECORD,
            object_id=object_id,
            details=details,
            tags=tags,
            actor=actor,
        )

    async def enable_record(
        self,
        record: str,
        details: str = "",
        *,
        object_id: str | None = None,
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
        commit = Commit()
        for concern in sorted({self.concern} | await self._disabled_by(part, record)):
            stored = await self.client.hget(part.handling_status(self.kind, concern), record)
            if decode_stored(stored)[0] is Status.DISABLED_FOR_RECORD:
                commit.settle(Action.ENABLE_RECORD, details=details, tags=tags, actor=actor,
                              record=(part, self.kind, concern, record))  # fmt: skip
        # Checked: of two concurrent enables, one commits and the other is refused.
        self._flag(commit, part, record, Action.ENABLE_RECORD, details, tags, actor,
                   [Status.DISABLED_FOR_RECORD.value])  # fmt: skip
        await commit.run(self.client)

    def _flag(  # noqa: PLR0917 - internal, mirrors apply()
        self,
        commit: Commit,
        part: PartitionKeys,
        record: str,
        action: Action,
        details: str,
        tags: Sequence[tuple[str, str]],
        actor: str,
        allowed_from: Sequence[str],
    ) -> None:
        """Set or clear a record's disable flag, logged with the concern and record as tags."""
        to = TRANSITIONS[action][1]
        where = (("concern", self.concern), ("record", record))
        entry = HistoryEntry(now_ms(), to, action, details, (*as_tags(tags), *where), actor)
        commit.switch(part, self.kind, record, to.value, entry, allowed_from=allowed_from,
                      concern=self.concern)  # fmt: skip

    async def _disabled_by(self, part: PartitionKeys, record: str) -> set[str]:
        """The concerns that disabled ``record``, from the partition's switch log."""
        log = part.handling_flags_log(self.kind)
        concerns = set()
        for each in cast(list[bytes], await self.client.lrange(log, 0, -1)):
            entry = HistoryEntry.from_bytes(each)
            tags = dict(entry.tags)
            if entry.action is Action.DISABLE_RECORD and tags.get("record") == record:
                concerns.add(tags.get("concern", ""))
        return concerns - {""}

    async def disable_stream(self, *, details: str = "", actor: str = "") -> None:
        """Stop handling the whole stream for this concern: bots leave its entries pending."""
        await self._switch(Action.DISABLE_STREAM, details, actor)

    async def enable_stream(self, *, details: str = "", actor: str = "") -> None:
        """Handle the stream again for this concern."""
        await self._switch(Action.ENABLE_STREAM, details, actor)

    async def _switch(self, action: Action, details: str, actor: str) -> None:
        # One commit per partition (each is one slot). A partition already switched is
        # left as it is, so a switch cut short by a crash completes when run again; it is
        # refused only when every partition was already switched.
        allowed, to = STREAM_SWITCH[action]
        entry = HistoryEntry(now_ms(), to, action, details, (("concern", self.concern),), actor)
        refused: list[InvalidTransition] = []
        for part in self.keys.all():
            commit = Commit()
            commit.switch(part, self.kind, part.stream_switch(self.concern), to.value, entry,
                          allowed_from=sorted(allowed), concern=self.concern)  # fmt: skip
            try:
                await commit.run(self.client)
            except InvalidTransition as exc:
                refused.append(exc)
        if len(refused) == self.keys.partitions:
            raise refused[0]

    # -- queries -----------------------------------------------------------------------------

    async def stream_disabled(self) -> bool:
        """True if the stream is disabled for this concern (in any partition)."""
        for part in self.keys.all():
            switch = part.stream_switch(self.concern)
            flag = await self.client.hget(part.handling_flags(self.kind), switch)
            if flag is not None and as_str(flag) == Status.DISABLED_FOR_STREAM:
                return True
        return False

    async def status(self, record: str, object_id: str | None = None) -> Status:
        """The record's stored status as bots see it: a disabled record or stream shows as such.

        Running is not stored (see the module docstring): a record being handled shows its
        claimable status here; ``streams.client`` derives Running from the consumer group.
        """
        return (await self._statuses([(record, object_id or record)]))[0]

    async def history(self, record: str, object_id: str | None = None) -> list[HistoryEntry]:
        """The record's history for this concern, oldest first, as Naos logs it.

        An outcome written by a bot also gives the claim that started its attempt.
        """
        part = self._part(record, object_id)
        stored = await self.client.hget(part.handling_status(self.kind, self.concern), record)
        return [step for entry in decode_stored(stored)[1] for step in entry.steps()]

    async def switch_history(self) -> list[HistoryEntry]:
        """Every stream and record switch change of this stream kind (all concerns), by time."""
        out: list[HistoryEntry] = []
        for part in self.keys.all():
            log = part.handling_flags_log(self.kind)
            out += [
                HistoryEntry.from_bytes(each)
                for each in cast(list[bytes], await self.client.lrange(log, 0, -1))
            ]
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
            pipe.hmget(part.handling_flags(self.kind), [part.stream_switch(self.concern), *records])
            stored, (stream, *flags) = await pipe.execute()
            paused = stream is not None and as_str(stream) == Status.DISABLED_FOR_STREAM
            for index, value, flag in zip(indexes, stored, flags, strict=True):
                current = decode_stored(value)[0]
                if flag is not None and as_str(flag) == Status.DISABLED_FOR_RECORD:
                    current = Status.DISABLED_FOR_RECORD
                elif paused and current in CLAIMABLE:
                    current = Status.DISABLED_FOR_STREAM
                out[index] = current
        return out


__all__ = ["HandlingStore", "RecordRef"]
