"""The Naos handling statuses, the transitions between them, and a record's history entries.

Pure data: what ``streams.handling`` stores and checks. A status changes only along
``TRANSITIONS`` (action -> allowed-from statuses, resulting status); ``Composite`` answers the
questions a saga or an operator asks of a set of records' statuses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import msgpack

from streamcqrs.streams.envelope import Tags
from streamcqrs.streams.errors import HandlingError


class Status(StrEnum):
    """Where the handling of one record for one concern stands (Naos's HandlingStatus)."""

    AVAILABLE_BY_DEFAULT = "AvailableByDefault"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    ARCHIVED_AFTER_FAILURE = "ArchivedAfterFailure"
    AVAILABLE_AFTER_COMPLETION = "AvailableAfterCompletion"
    AVAILABLE_AFTER_FAILURE = "AvailableAfterFailure"
    AVAILABLE_AFTER_EXTERNAL_CANCELLATION = "AvailableAfterExternalCancellation"
    AVAILABLE_AFTER_SELF_CANCELLATION = "AvailableAfterSelfCancellation"
    DISABLED_FOR_RECORD = "DisabledForRecord"
    DISABLED_FOR_STREAM = "DisabledForStream"


class Action(StrEnum):
    """What moves a status; the value reads in errors ("cannot complete record ...")."""

    CLAIM = "claim"
    RECLAIM = "reclaim"  # a live bot takes over the claim of a dead one
    COMPLETE = "complete"
    FAIL = "fail"
    RETRY = "retry"  # the attempt failed and will be tried again
    SELF_CANCEL = "self-cancel"
    EXTERNAL_CANCEL = "external-cancel"
    RESET_FAILED = "reset-failed"
    RESET_COMPLETED = "reset-completed"
    ARCHIVE_FAILURE = "archive-failure"
    DISABLE_RECORD = "disable-record"
    ENABLE_RECORD = "enable-record"
    DISABLE_STREAM = "disable-stream"  # the stream's switch, not a record: see STREAM_SWITCH
    ENABLE_STREAM = "enable-stream"


CLAIMABLE = frozenset(
    {
        Status.AVAILABLE_BY_DEFAULT,
        Status.AVAILABLE_AFTER_COMPLETION,
        Status.AVAILABLE_AFTER_FAILURE,
        Status.AVAILABLE_AFTER_EXTERNAL_CANCELLATION,
        Status.AVAILABLE_AFTER_SELF_CANCELLATION,
    }
)
"""Statuses a claim may move to Running."""

_RUNNING = frozenset({Status.RUNNING})
# A running record is cancelled first (its handler's commit would otherwise land on a
# disabled record); a disabled one is enabled, not disabled twice.
_DISABLE_FROM = CLAIMABLE | {
    Status.COMPLETED,
    Status.FAILED,
    Status.ARCHIVED_AFTER_FAILURE,
}

TRANSITIONS: Mapping[Action, tuple[frozenset[Status], Status]] = {
    Action.CLAIM: (CLAIMABLE, Status.RUNNING),
    Action.RECLAIM: (_RUNNING, Status.RUNNING),
    Action.COMPLETE: (_RUNNING, Status.COMPLETED),
    Action.FAIL: (_RUNNING, Status.FAILED),
    Action.RETRY: (_RUNNING, Status.AVAILABLE_AFTER_FAILURE),
    Action.SELF_CANCEL: (_RUNNING, Status.AVAILABLE_AFTER_SELF_CANCELLATION),
    Action.EXTERNAL_CANCEL: (_RUNNING, Status.AVAILABLE_AFTER_EXTERNAL_CANCELLATION),
    Action.RESET_FAILED: (frozenset({Status.FAILED}), Status.AVAILABLE_AFTER_FAILURE),
    Action.RESET_COMPLETED: (frozenset({Status.COMPLETED}), Status.AVAILABLE_AFTER_COMPLETION),
    Action.ARCHIVE_FAILURE: (frozenset({Status.FAILED}), Status.ARCHIVED_AFTER_FAILURE),
    Action.DISABLE_RECORD: (_DISABLE_FROM, Status.DISABLED_FOR_RECORD),
    Action.ENABLE_RECORD: (frozenset({Status.DISABLED_FOR_RECORD}), Status.AVAILABLE_BY_DEFAULT),
}
"""Per record action: the statuses it is allowed from, and the status it sets."""

STREAM_SWITCH: Mapping[Action, tuple[frozenset[Status], Status]] = {
    Action.DISABLE_STREAM: (frozenset({Status.AVAILABLE_BY_DEFAULT}), Status.DISABLED_FOR_STREAM),
    Action.ENABLE_STREAM: (frozenset({Status.DISABLED_FOR_STREAM}), Status.AVAILABLE_BY_DEFAULT),
}
"""The stream switch of one concern: enabled (AvailableByDefault) or DisabledForStream."""

DONE = frozenset({Status.COMPLETED, Status.ARCHIVED_AFTER_FAILURE, Status.DISABLED_FOR_RECORD})
"""Statuses nothing more will happen from unless an operator acts. Failed is not done (it
awaits a reset or an archive); DisabledForStream is a pause, not an end."""


_BOT_OUTCOMES = (
    Action.COMPLETE,
    Action.FAIL,
    Action.RETRY,
    Action.SELF_CANCEL,
    Action.EXTERNAL_CANCEL,
)

STORED_FROM: Mapping[Action, frozenset[Status]] = {
    action: (allowed | CLAIMABLE) if action in _BOT_OUTCOMES else allowed
    for action, (allowed, _to) in TRANSITIONS.items()
}
"""Per record action: the *stored* statuses it may start from.

Bots do not store Running: the consumer group's pending entry already says who is handling
a record, so a claim costs no write. A record is Running while its entry is pending for the
concern and its stored status is a claimable one; so the outcomes a bot commits (complete,
fail, retry, self-cancel) start from any claimable stored status, or from a Running one left
by an operator or an earlier version. Operator actions keep Naos's table as it is."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One step of a record's handling history: what happened, when, why, by whom.

    ``started_ms`` is when the attempt that ended here began (a bot's outcome entries): the
    claim Naos would log as its own entry, kept inside the outcome instead; ``taken_over``
    says that claim took the entry over from a consumer that died or hung (a reclaim).
    """

    at_ms: int
    status: Status
    action: Action
    details: str = ""
    tags: Tags = ()
    actor: str = ""
    started_ms: int = 0
    attempt: int = 0
    taken_over: bool = False

    def to_bytes(self) -> bytes:
        """Pack as a msgpack array: at, status, action, details, tags, actor, and for a bot's
        outcome also started, attempt, taken over.

        An array, not a map: a record's history is stored inline beside its status (see
        ``encode_stored``), and names would double its size.
        """
        return pack_history(
            self.at_ms, self.status, self.action, self.details, self.tags, self.actor,
            self.started_ms, self.attempt, self.taken_over,
        )  # fmt: skip

    @classmethod
    def from_fields(cls, data: object) -> HistoryEntry:
        """Build from an unpacked entry; HandlingError if it is not a history entry."""
        try:
            if not isinstance(data, list | tuple) or len(data) < 6:
                raise TypeError(f"expected a list of 6 to 9 fields, got {data!r:.64}")
            at, status, action, details, tags, actor = data[:6]
            started, attempt, taken = (*data[6:9], 0, 0, 0)[:3]
            return cls(
                at_ms=int(at),
                status=Status(status),
                action=Action(action),
                details=str(details),
                tags=tuple((str(n), str(v)) for n, v in tags),
                actor=str(actor),
                started_ms=int(started),
                attempt=int(attempt),
                taken_over=bool(taken),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise HandlingError(f"malformed handling history entry: {exc}") from exc

    @classmethod
    def from_bytes(cls, raw: bytes) -> HistoryEntry:
        """Unpack what ``to_bytes`` wrote; HandlingError if it is not a history entry."""
        try:
            data = msgpack.unpackb(raw)
        except (ValueError, msgpack.UnpackException) as exc:
            raise HandlingError(f"malformed handling history entry {raw[:64]!r}: {exc}") from exc
        return cls.from_fields(data)

    def steps(self) -> list[HistoryEntry]:
        """This entry as Naos would log it: the claim that started the attempt, then this."""
        if not self.started_ms:
            return [self]
        action = Action.RECLAIM if self.taken_over else Action.CLAIM
        claim = HistoryEntry(
            self.started_ms, Status.RUNNING, action, actor=self.actor, attempt=self.attempt
        )
        return [claim, self]


def pack_history(  # noqa: PLR0917 - the entry's fields, in their stored order
    at_ms: int,
    status: Status,
    action: Action,
    details: str,
    tags: Tags,
    actor: str,
    started_ms: int = 0,
    attempt: int = 0,
    taken_over: bool = False,
) -> bytes:
    """A history entry as stored (``HistoryEntry.to_bytes``), made without the object."""
    fields: list[object] = [at_ms, status.value, action.value, details, [list(t) for t in tags],
                            actor]  # fmt: skip
    if started_ms or attempt or taken_over:
        fields += [started_ms, attempt, int(taken_over)]
    packed: bytes = msgpack.packb(fields)
    return packed


def decode_stored(value: bytes | str | None) -> tuple[Status, list[HistoryEntry]]:
    """A record's stored handling value: its status and its history, oldest first.

    The value is ``<status>|<history entries>`` (msgpack arrays back to back), one hash field
    per record and concern: the history costs what its entries cost, no key of its own.
    """
    if value is None:
        return Status.AVAILABLE_BY_DEFAULT, []
    raw = value.encode() if isinstance(value, str) else bytes(value)
    name, _, packed = raw.partition(b"|")
    try:
        status = Status(name.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise HandlingError(f"malformed handling status {raw[:64]!r}: {exc}") from exc
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(packed)
    try:
        history = [HistoryEntry.from_fields(each) for each in unpacker]
    except (ValueError, msgpack.UnpackException) as exc:
        raise HandlingError(f"malformed handling history of {raw[:64]!r}: {exc}") from exc
    return status, history


@dataclass(frozen=True, slots=True)
class Composite:
    """The statuses of a set of records, counted, with the questions a saga asks of them.

    Over an empty set ``all_*`` are true and ``any_*`` false, as ``all()``/``any()`` are.
    """

    counts: Mapping[Status, int] = field(default_factory=dict)

    @classmethod
    def of(cls, statuses: Iterable[Status]) -> Composite:
        """Count ``statuses``."""
        counts: dict[Status, int] = {}
        for status in statuses:
            counts[status] = counts.get(status, 0) + 1
        return cls(counts)

    @property
    def total(self) -> int:
        """How many records."""
        return sum(self.counts.values())

    def count(self, *statuses: Status) -> int:
        """How many records are in any of ``statuses``."""
        return sum(self.counts.get(s, 0) for s in statuses)

    @property
    def all_completed(self) -> bool:
        """Every record Completed."""
        return self.count(Status.COMPLETED) == self.total

    @property
    def all_done(self) -> bool:
        """Every record Completed, ArchivedAfterFailure or DisabledForRecord."""
        return self.count(*DONE) == self.total

    @property
    def any_failed(self) -> bool:
        """Some record Failed (and not yet reset or archived)."""
        return self.count(Status.FAILED) > 0

    @property
    def any_running(self) -> bool:
        """Some record Running."""
        return self.count(Status.RUNNING) > 0


__all__ = [
    "CLAIMABLE",
    "DONE",
    "STORED_FROM",
    "STREAM_SWITCH",
    "TRANSITIONS",
    "Action",
    "Composite",
    "HistoryEntry",
    "Status",
    "decode_stored",
    "pack_history",
]
