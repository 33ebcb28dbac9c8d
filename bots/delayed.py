"""The mover: puts delayed entries into their stream when they fall due.

Delayed work (``ctx.put(..., execute_earliest=...)``, retries, self-cancellations) waits in
the partition's delayed sorted set, scored by due time in ms, so it survives restarts. Each
bot moves the due members of the sets beside the streams it consumes: per member, one
``commit.lua`` call that TAKEs it from the set and PUTs it into the stream. TAKE fails
(GONE) if another bot moved it first, so a member is moved exactly once however many bots
run. The mover sleeps until the next member is due, at most ``interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import msgpack
import redis.asyncio
import redis.exceptions

from streamcqrs.bots.source import ATTEMPT_FIELD, CONCERN_FIELD
from streamcqrs.streams.commit import Batch, run_many
from streamcqrs.streams.deadletter import add_dead_letter, dead_letter
from streamcqrs.streams.delayed import Delayed
from streamcqrs.streams.errors import Gone
from streamcqrs.streams.keys import Kind, PartitionKeys

PER_ROUND = 200
"""Most members moved per set per round; a bigger backlog is moved over further rounds."""


def move_batch(part: PartitionKeys, zset: str, member: bytes) -> Batch:
    """The batch that moves one delayed member into its stream (or, if junk, dead-letters)."""
    batch = Batch()
    batch.take(zset, member)
    try:
        parked = Delayed.unpack(member)
        kind = Kind(parked.kind)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        letter = dead_letter(
            reason=f"delayed member is not a packed put: {exc}",
            stream=zset,
            entry_id="",
            raw={b"member": member},
            error=exc,
        )
        add_dead_letter(batch, part, letter)
        return batch
    extra: list[bytes | str | int] = []
    if parked.attempt:
        extra += [ATTEMPT_FIELD, parked.attempt]
    if parked.concern:
        extra += [CONCERN_FIELD, parked.concern]
    batch.put(
        part, kind, parked.envelope, on_existing=parked.on_existing, keep=parked.keep, extra=extra
    )
    return batch


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
        now = time.time_ns() // 1_000_000
        pipe = self.client.pipeline(transaction=False)
        for part, kind in self.sets:
            zset = part.delayed(kind)
            pipe.zrangebyscore(zset, "-inf", now, start=0, num=PER_ROUND)
            pipe.zrangebyscore(zset, f"({now}", "+inf", start=0, num=1, withscores=True)
        replies = await pipe.execute()
        batches: list[Batch] = []
        wait = self.interval
        for at, (part, kind) in enumerate(self.sets):
            due, upcoming = replies[2 * at], replies[2 * at + 1]
            zset = part.delayed(kind)
            batches += [move_batch(part, zset, member) for member in due]
            if len(due) >= PER_ROUND:
                wait = 0.0
            elif upcoming:
                wait = min(wait, max(0.0, (float(upcoming[0][1]) - now) / 1000))
        for result in await run_many(self.client, batches):
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


__all__ = ["Mover", "move_batch"]
