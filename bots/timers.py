"""The timers: put each schedule's operation when due, exactly once however many bots run.

Every bot runs the timers of its app's schedules (``app.every``, ``app.cron``; see
``handlers.schedules``). Per schedule one hash field in the target partition holds the last
due time dealt with. A round reads those fields, works out which due times have passed since
(and which of them the misfire policy puts), and for each schedule sends one commit that
moves the field from the value it read to the newest due time and puts the operations. The
commit checks the field first (``Commit.advance``): of bots racing for one due time one
commits and the others are refused and read again. A new schedule's field starts at the last
due time before the first bot saw it, so nothing from before the deploy is put.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio
import redis.exceptions

from streamcqrs.domain.registry import TypeRegistry
from streamcqrs.handlers.schedules import Schedule
from streamcqrs.streams import now_ms
from streamcqrs.streams.commit import Commit, run_commits
from streamcqrs.streams.envelope import as_str, encode
from streamcqrs.streams.errors import Gone
from streamcqrs.streams.keys import PartitionKeys, SubsystemKeys

LONGEST_SLEEP = 1.0
"""Seconds between two looks at the schedules when nothing falls due sooner."""


class Timers:
    """Puts the operations of ``schedules`` when due (see the module docstring)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        schedules: Sequence[Schedule],
        keys_of: Mapping[str, SubsystemKeys],
        *,
        types: TypeRegistry,
        log: Any,
    ) -> None:
        self.client = client
        self.schedules = list(schedules)
        self.keys_of = keys_of
        self.types = types
        self.log = log
        self.put = 0
        """Operations this bot put (the others' share is theirs)."""

    def _keys(self, schedule: Schedule) -> SubsystemKeys:
        sub = schedule.target.subsystem
        return self.keys_of.get(sub) or SubsystemKeys(sub)

    def _part(self, schedule: Schedule) -> PartitionKeys:
        return self._keys(schedule).for_object(schedule.object_id)

    async def round(self) -> float:
        """Put what is due now; seconds until the next due time (at most LONGEST_SLEEP)."""
        if not self.schedules:
            return LONGEST_SLEEP
        pipe = self.client.pipeline(transaction=False)
        for schedule in self.schedules:
            pipe.hget(self._part(schedule).schedules, schedule.name)
        cursors = await pipe.execute()
        now = now_ms()
        commits: list[tuple[Commit, int]] = []
        wait = LONGEST_SLEEP
        for schedule, stored in zip(self.schedules, cursors, strict=True):
            hash_key = self._part(schedule).schedules
            if stored is None:
                start = schedule.last_at_or_before(now)
                commit = Commit()
                commit.advance(hash_key, schedule.name, "", str(start))
                commits.append((commit, 0))
                after = start
            else:
                cursor = int(as_str(stored))
                due, after, skipped = schedule.due(cursor, now)
                if after != cursor:
                    commits.append((self._fire(schedule, hash_key, cursor, after, due), len(due)))
                if skipped:
                    self.log.warning("schedule missed due times (no bot ran); skipped them",
                                     schedule=schedule.name, skipped=skipped)  # fmt: skip
            wait = min(wait, max(0.0, (schedule.next_after(after) - now) / 1000))
        results = await run_commits(self.client, [c for c, _ in commits])
        for (_commit, count), result in zip(commits, results, strict=True):
            if isinstance(result, Gone):
                wait = 0.0  # another bot moved it: read again at once
            elif isinstance(result, Exception):
                raise result
            else:
                self.put += count
        return wait

    def _fire(
        self, schedule: Schedule, hash_key: str, cursor: int, after: int, due: list[int]
    ) -> Commit:
        """One commit: the cursor from ``cursor`` to ``after``, and a put per due time."""
        commit = Commit()
        commit.advance(hash_key, schedule.name, str(cursor), str(after))
        keys = self._keys(schedule)
        for at in due:
            envelope = encode(schedule.operation(at), object_id=schedule.object_id,
                              message_id=schedule.message_id(at), types=self.types)  # fmt: skip
            commit.put(keys, schedule.target.kind, envelope)
        return commit

    async def run(self, stopping: asyncio.Event) -> None:
        """Put due operations until ``stopping`` is set; ride out connection trouble."""
        pause = 0.1
        while not stopping.is_set():
            try:
                wait = await self.round()
                pause = 0.1
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                self.log.warning("timers lost the server; retrying", pause_s=pause)
                wait, pause = pause, min(pause * 2, 5.0)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=wait)


__all__ = ["LONGEST_SLEEP", "Timers"]
