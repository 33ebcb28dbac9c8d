"""Retention policies: how long what a stream's handling leaves behind is kept.

``app.retention("shop/client-ops", keep_done_for=timedelta(days=7), max_age=timedelta(days=30))``
declares, per stream, what the cleaner (``bots.cleaner``) removes:

* ``keep_done_for``: the handling status and history of a record that is done (Completed, or
  ArchivedAfterFailure after an operator archived it) for that long. Failed records and
  their history stay until an operator resets or archives them; so do disabled ones.
* ``maxlen`` / ``max_age``: the stream's oldest entries beyond that many (per partition) or
  older than that, never one a consumer group has not read yet or still has pending; with
  them go their entries in the stream's indexes (latest by id, by tag, by object).
* ``compact_aggregates`` (on a ``SUBSYSTEM/snapshots`` stream): each aggregate of the
  subsystem drops the events its latest snapshot already holds, keeping its version (the
  list's ``H<base>`` header). Loading still works; ``load(at_version=...)`` before the
  snapshot does not. Only where the app allows it: a snapshot of a class whose shape changed
  can no longer be replayed from the events.

Nothing is cleaned unless a policy says so. ``app.cleaner(every=..., batch=..., pause=...)``
sets how often the cleaner runs and how hard it works; one bot at a time leads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.streams.keys import Kind

if TYPE_CHECKING:
    from streamcqrs.handlers.registry import StreamRef


def seconds(value: timedelta | float | None) -> float | None:
    """Seconds from a timedelta or a number (None stays None); refuses negative times."""
    if value is None:
        return None
    out = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if out < 0:
        raise ConfigurationError(f"retention times must not be negative, got {out} s")
    return out


@dataclass(frozen=True, slots=True)
class Retention:
    """One stream's policy (see the module docstring); None keeps that part forever."""

    stream: StreamRef
    keep_done_for: float | None = None
    """Seconds a done record keeps its handling status and history."""
    maxlen: int | None = None
    """Most entries kept per partition."""
    max_age: float | None = None
    """Seconds an entry is kept."""
    compact_aggregates: bool = False
    """(snapshots streams) Drop aggregates' events behind their latest snapshot."""

    def __post_init__(self) -> None:
        if self.maxlen is not None and self.maxlen < 0:
            raise ConfigurationError(f"retention of {self.stream}: maxlen must be >= 0")
        if self.compact_aggregates:
            if self.stream.kind is not Kind.SNAPSHOTS:
                raise ConfigurationError(
                    f"compact_aggregates goes on a snapshots stream ('{self.stream.subsystem}/"
                    f"snapshots'), not on {self.stream}: compaction keeps what snapshots hold"
                )
            if self.maxlen is not None or self.max_age is not None:
                raise ConfigurationError(
                    f"retention of {self.stream}: with compact_aggregates the snapshots are "
                    "the only copy of the compacted events; do not trim them (drop maxlen and "
                    "max_age)"
                )

    @property
    def trims(self) -> bool:
        """True if the policy trims the stream itself."""
        return self.maxlen is not None or self.max_age is not None


@dataclass(frozen=True, slots=True)
class CleanerSettings:
    """How often the cleaner runs, how much it does per step, and its leader lease."""

    every: float = 60.0
    """Seconds between the end of one cycle and the start of the next."""
    batch: int = 500
    """Records (or index entries) looked at per step."""
    pause: float = 0.0
    """Seconds to sleep between steps, to spare a busy server."""
    lease_ttl: float = 30.0
    """Seconds the leader's lease lasts unrenewed: how long a dead leader blocks the next."""

    def __post_init__(self) -> None:
        if self.every <= 0 or self.batch < 1 or self.pause < 0 or self.lease_ttl < 0.1:
            raise ConfigurationError(
                "cleaner: every must be > 0 s, batch >= 1, pause >= 0 s and lease_ttl >= 0.1 s"
            )


__all__ = ["CleanerSettings", "Retention", "seconds"]
