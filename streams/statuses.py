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


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One step of a record's handling history: what happened, when, why, by whom."""

    at_ms: int
    status: Status
    action: Action
    details: str = ""
    tags: Tags = ()
    actor: str = ""

    def to_bytes(self) -> bytes:
        """Pack as a msgpack map (readable field names in ``redis-cli LRANGE``)."""
        packed: bytes = msgpack.packb(
            {
                "at": self.at_ms,
                "status": self.status.value,
                "action": self.action.value,
                "details": self.details,
                "tags": [list(t) for t in self.tags],
                "actor": self.actor,
            }
        )
        return packed

    @classmethod
    def from_bytes(cls, raw: bytes) -> HistoryEntry:
        """Unpack what ``to_bytes`` wrote; HandlingError if it is not a history entry."""
        try:
            data = msgpack.unpackb(raw)
            return cls(
                at_ms=int(data["at"]),
                status=Status(data["status"]),
                action=Action(data["action"]),
                details=str(data.get("details", "")),
                tags=tuple((str(n), str(v)) for n, v in data.get("tags", ())),
                actor=str(data.get("actor", "")),
            )
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            raise HandlingError(f"malformed handling history entry {raw[:64]!r}: {exc}") from exc


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
    "STREAM_SWITCH",
    "TRANSITIONS",
    "Action",
    "Composite",
    "HistoryEntry",
    "Status",
]
