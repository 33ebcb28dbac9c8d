"""The mover: puts delayed entries into their stream when they fall due.

Delayed work (``ctx.put(..., execute_earliest=...)``, tickets, retries, self-cancellations)
waits in the partition's delayed sorted set, scored by due time in ms, so it survives
restarts. Each bot moves the due members of every delayed set its app writes to
(``delayed_sets``): beside the streams it consumes, and beside every stream a handler
declares in ``writes`` or a ticket goes to, so a delayed put into another subsystem's stream
moves even when no bot of that subsystem runs. Per member, one commit takes it from the set
and puts it into the stream (``Commit.move_due``); the take fails (Gone) if another bot moved
it first, so a member is moved exactly once however many bots run. The mover sleeps until the
next member is due, at most ``interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import redis.asyncio
import redis.exceptions

from streamcqrs.handlers.delivery import Source
from streamcqrs.handlers.registry import App
from streamcqrs.streams import now_ms
from streamcqrs.streams.commit import Commit, run_commits
from streamcqrs.streams.errors import Gone
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys

PER_ROUND = 200
"""Most members moved per set per round; a bigger backlog is moved over further rounds."""


def delayed_sets(app: App, sources: Iterable[Source]) -> set[tuple[PartitionKeys, Kind]]:
    """Every delayed set ``app`` writes to: its inputs', its declared outputs', its tickets'."""
    out = {(s.part, s.ref.kind) for s in sources}
    for ref in app.delayed_streams():
        keys = SubsystemKeys(ref.subsystem, app.partitions_of(ref.subsystem))
        out |= {(part, ref.kind) for part in keys.all()}
    return out


class Mover:
    """Moves due members of the delayed sets of ``(partition, kind)`` pairs."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        sets: Iterable[tuple[PartitionKeys, Kind]],
        *,
        interval: float,
        log: Any,
    ) -> None:
        self.client = client
        self.sets = sorted(set(sets), key=lambda pk: (pk[0].tag, pk[1].value))
        self.interval = interval
        self.log = log
        self.moved = 0

    async def round(self) -> float:
        """Move what is due now; return seconds until the next member is due (capped)."""
        now = now_ms()
        pipe = self.client.pipeline(transaction=False)
        for part, kind in self.sets:
            zset = part.delayed(kind)
            pipe.zrangebyscore(zset, "-inf", now, start=0, num=PER_ROUND)
            pipe.zrangebyscore(zset, f"({now}", "+inf", start=0, num=1, withscores=True)
        replies = await pipe.execute()
        commits: list[Commit] = []
        wait = self.interval
        for at, (part, kind) in enumerate(self.sets):
            due, upcoming = replies[2 * at], replies[2 * at + 1]
            zset = part.delayed(kind)
            for member in due:
                commit = Commit()
                commit.move_due(part, kind, member)
                commits.append(commit)
            if len(due) >= PER_ROUND:
                wait = 0.0
            elif upcoming:
                wait = min(wait, max(0.0, (float(upcoming[0][1]) - now) / 1000))
        for result in await run_commits(self.client, commits):
            if isinstance(result, Gone):
                continue  # another bot moved it: fine
            if isinstance(result, Exception):
                self.log.error("delayed entry not moved", error=str(result))
            else:
                self.moved += 1
        return wait

    async def run(self, stopping: asyncio.Event) -> None:
        """Move due members until ``stopping`` is set; ride out connection trouble."""
        pause = 0.1
        while not stopping.is_set():
            try:
                wait = await self.round()
                pause = 0.1
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                self.log.warning("delayed mover lost the server; retrying", pause_s=pause)
                wait, pause = pause, min(pause * 2, 5.0)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=wait)


__all__ = ["Mover", "delayed_sets"]
