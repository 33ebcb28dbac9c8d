"""Recurring timers and cron schedules: an operation put exactly once per due time.

``app.every(timedelta(minutes=10), SyncCrm(), stream="crm/internal-ops")`` and
``app.cron("0 * * * *", make_report, stream="reports/internal-ops")`` declare a schedule; the
bots put its operation when due (``bots.timers``). Due times are a pure function of the
schedule (every: multiples of the interval since the epoch, plus an offset; cron: the
expression's times in its time zone, computed by croniter), so every bot agrees on them.
Which of them were put is one hash field per schedule, the last due time put; a bot puts
the next due times and moves that field forward in one atomic commit that first checks the
field still holds what the bot read. However many bots race, each due time is put once.

When bots were down past a due time by more than the schedule's ``grace`` it is a misfire:
``misfire="skip"`` drops the missed due times (the next one is put on time), ``"catch_up"``
puts every missed one (up to ``catch_up_limit``) as soon as a bot runs again. A schedule
removed from the app is no longer put by any bot that runs the new app.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.domain.messages import Operation
from streamcqrs.streams.keys import Kind, check_concern

if TYPE_CHECKING:
    from streamcqrs.handlers.registry import StreamRef

Misfire = Literal["skip", "catch_up"]
MakeOperation = Operation | Callable[[datetime], Operation]
"""The operation to put, or a function of the due time (UTC) that makes it."""
OPERATION_KINDS = frozenset({Kind.CLIENT_OPERATIONS, Kind.INTERNAL_OPERATIONS, Kind.SAGAS})


def _cron_class() -> Any:
    try:
        from croniter import croniter
    except ImportError:  # pragma: no cover - the message is the test
        raise ConfigurationError(
            "app.cron needs croniter: pip install 'streamcqrs[cron]'"
        ) from None
    return croniter


@dataclass(frozen=True, slots=True)
class Schedule:
    """One declared schedule: when it is due, what it puts where, what a misfire does."""

    name: str
    target: StreamRef
    make: MakeOperation
    object_id: str
    misfire: Misfire
    grace_ms: int
    """A due time found later than this after it passed is a misfire."""
    interval_ms: int = 0
    """``every``: the period; 0 for a cron schedule."""
    offset_ms: int = 0
    """``every``: due times are ``k * interval + offset`` ms since the epoch."""
    cron: str = ""
    tz: str = "UTC"
    catch_up_limit: int = 1000
    """Most missed due times ``catch_up`` puts after an outage (the oldest are dropped)."""

    def __post_init__(self) -> None:
        check_concern(self.name)
        if self.target.kind not in OPERATION_KINDS:
            raise ConfigurationError(
                f"schedule {self.name!r} puts into {self.target}; a schedule puts operations: "
                "use a client-ops, internal-ops or sagas stream"
            )
        if self.misfire not in ("skip", "catch_up"):
            raise ConfigurationError(
                f"schedule {self.name!r}: misfire must be 'skip' or 'catch_up', not "
                f"{self.misfire!r}"
            )
        if self.cron:
            if not _cron_class().is_valid(self.cron):
                raise ConfigurationError(
                    f"schedule {self.name!r}: {self.cron!r} is not a cron expression "
                    "(minute hour day-of-month month day-of-week, e.g. '0 * * * *')"
                )
            try:
                ZoneInfo(self.tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigurationError(
                    f"schedule {self.name!r}: unknown time zone {self.tz!r} (e.g. 'UTC', "
                    "'Europe/Berlin')"
                ) from None
        if self.catch_up_limit < 1:
            raise ConfigurationError(f"schedule {self.name!r}: catch_up_limit must be >= 1")
        if not self.cron and self.interval_ms < 1:
            raise ConfigurationError(
                f"schedule {self.name!r}: the interval must be at least 1 ms"
            )

    @classmethod
    def every(
        cls,
        interval: timedelta | float,
        make: MakeOperation,
        *,
        stream: str,
        name: str,
        object_id: str | None = None,
        misfire: Misfire = "skip",
        grace: timedelta | float | None = None,
        offset: timedelta | float = 0.0,
        catch_up_limit: int = 1000,
    ) -> Schedule:
        """Due every ``interval`` (seconds or a timedelta), aligned to the epoch + ``offset``."""
        from streamcqrs.handlers.registry import StreamRef

        period = _ms(interval)
        grace_ms = _ms(grace) if grace is not None else min(max(period // 2, 1), 60_000)
        return cls(name, StreamRef.parse(stream), make, object_id or name, misfire, grace_ms,
                   interval_ms=period, offset_ms=_ms(offset) % max(period, 1),
                   catch_up_limit=catch_up_limit)  # fmt: skip

    @classmethod
    def cron_schedule(
        cls,
        expression: str,
        make: MakeOperation,
        *,
        stream: str,
        name: str,
        object_id: str | None = None,
        misfire: Misfire = "skip",
        grace: timedelta | float | None = None,
        tz: str = "UTC",
        catch_up_limit: int = 1000,
    ) -> Schedule:
        """Due at the times of a cron ``expression`` in time zone ``tz``."""
        from streamcqrs.handlers.registry import StreamRef

        grace_ms = _ms(grace) if grace is not None else 60_000
        return cls(name, StreamRef.parse(stream), make, object_id or name, misfire, grace_ms,
                   cron=expression, tz=tz, catch_up_limit=catch_up_limit)  # fmt: skip

    # -- due times ---------------------------------------------------------------------------

    def next_after(self, ms: int) -> int:
        """The first due time strictly after ``ms`` (epoch ms)."""
        if self.cron:
            start = datetime.fromtimestamp(ms / 1000, ZoneInfo(self.tz))
            return round(float(_cron_class()(self.cron, start).get_next(float)) * 1000)
        steps = (ms - self.offset_ms) // self.interval_ms + 1
        return steps * self.interval_ms + self.offset_ms

    def last_at_or_before(self, ms: int) -> int:
        """The latest due time at or before ``ms``."""
        if self.cron:
            start = datetime.fromtimestamp((ms + 1) / 1000, ZoneInfo(self.tz))
            return round(float(_cron_class()(self.cron, start).get_prev(float)) * 1000)
        steps = (ms - self.offset_ms) // self.interval_ms
        return steps * self.interval_ms + self.offset_ms

    def due(self, after_ms: int, now_ms: int) -> tuple[list[int], int, int]:
        """What to do about the due times after ``after_ms`` up to ``now_ms``.

        Returns the due times to put (by the misfire policy), the new cursor (the last due
        time dealt with, put or skipped), and how many due times were skipped.
        """
        first = self.next_after(after_ms)
        if first > now_ms:
            return [], after_ms, 0
        start, skipped = first, 0
        if self.misfire == "skip":
            in_grace = self.next_after(now_ms - self.grace_ms - 1)  # first one not missed
            if in_grace > first:
                skipped, start = self._count(first, in_grace), in_grace
        elif self.interval_ms:
            # An outage longer than the limit: only the newest due times are put.
            oldest = self.last_at_or_before(now_ms) - (self.catch_up_limit - 1) * self.interval_ms
            if oldest > first:
                skipped, start = self._count(first, oldest), oldest
        passed: list[int] = []
        at = start
        while at <= now_ms:
            passed.append(at)
            if len(passed) > self.catch_up_limit:
                passed.pop(0)
                skipped += 1
            at = self.next_after(at)
        return passed, (passed[-1] if passed else self.last_at_or_before(now_ms)), skipped

    def _count(self, first: int, stop: int) -> int:
        """How many due times fall in [first, stop) (both due times)."""
        if not self.cron:
            return (stop - first) // self.interval_ms
        count, at = 0, first
        while at < stop and count < 100_000:
            count += 1
            at = self.next_after(at)
        return count

    # -- what is put -------------------------------------------------------------------------

    def operation(self, due_ms: int) -> Operation:
        """The operation for due time ``due_ms``."""
        if isinstance(self.make, Operation):
            return self.make
        return self.make(datetime.fromtimestamp(due_ms / 1000, UTC))

    def message_id(self, due_ms: int) -> str:
        """The put's message id: the same for one due time whoever puts it."""
        seed = f"schedule:{self.target}:{self.name}:{due_ms}".encode()
        return hashlib.blake2b(seed, digest_size=16).hexdigest()

    def describe(self) -> str:
        """``every 1s`` or ``cron '0 * * * *' UTC``, for logs and status."""
        if self.cron:
            return f"cron {self.cron!r} {self.tz}"
        return f"every {self.interval_ms / 1000:g}s"


def _ms(value: timedelta | float) -> int:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ConfigurationError(f"a schedule's times must not be negative, got {seconds} s")
    return round(seconds * 1000)


__all__ = ["MakeOperation", "Misfire", "Schedule"]
