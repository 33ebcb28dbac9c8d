"""The outbox relay: inside each bot on a cluster, it forwards its partitions' outboxes.

On a cluster, a bot's commit puts what belongs to another slot into its input partition's
outbox (``streams.outbox``). Every bot runs a relay over the partitions it reads; one relay
at a time forwards a partition (a lease per partition, ``streams.leases``, renewed every third
of its time to live), so entries leave each outbox in order. A relay that dies (kill -9)
stops renewing and another takes its partitions over once the leases lapse; what it had
forwarded but not yet deleted is forwarded again and written nothing the second time.

The partitions spread over the relays: each notes itself, with the time, in a small sorted
set (``RELAYS``), counts the relays seen within three lease times, and holds no more than its
share (``ceil(partitions / relays)``): it takes a free lease only while under its share and
gives up leases over it, so a second bot started beside a first takes half the work.

A relay wakes at once when its own bot's commits wrote to an outbox, and otherwise looks every
``interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamcqrs.handlers.delivery import Source
from streamcqrs.streams import outbox as box
from streamcqrs.streams._ids import now_ms
from streamcqrs.streams._wire import check_one_slot, send_all
from streamcqrs.streams.acl import RELAY_REGISTRY
from streamcqrs.streams.keys import PartitionKeys
from streamcqrs.streams.leases import release_all, take_all
from streamcqrs.streams.scripts import load_all

RELAYS = RELAY_REGISTRY
"""Sorted set of the relays alive (member: holder, score: last seen, ms)."""
PER_ROUND = 200
"""Most outbox entries one partition forwards per round."""
NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def check_slots(sources: Iterable[Source]) -> None:
    """ConfigurationError naming a key a bot's commit for ``source`` would send off its slot.

    Every key a bot's commit touches for an input (the stream, its handling store, switches,
    delayed set, outbox) must be in the input partition's slot; the key scheme makes it so,
    and this proves it at start, before anything is read.
    """
    for source in sources:
        part, kind = source.part, source.ref.kind
        check_one_slot(
            [source.key, part.handling_status(kind, source.concern), part.handling_flags(kind),
             part.delayed(kind), part.outbox, part.outbox_lease],
            f"a commit of {source}",
        )  # fmt: skip


class OutboxRelay:
    """Forwards the outboxes of ``parts`` it holds the lease of (see the module)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        parts: Iterable[PartitionKeys],
        *,
        holder: str,
        lease_s: float,
        interval: float,
        max_attempts: int,
        log: Any,
    ) -> None:
        self.client = client
        self.parts = sorted(set(parts), key=lambda p: p.tag)
        self.holder = holder
        self.lease_ms = max(100, int(lease_s * 1000))
        self.interval = interval
        self.max_attempts = max_attempts
        self.log = log
        self.held: list[PartitionKeys] = []
        self.forwarded = 0
        self.sent_back = 0
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look at the outboxes now (this bot's commits just wrote to one)."""
        self._wake.set()

    async def _share(self) -> int:
        """Note this relay alive; how many partitions it may hold."""
        now = now_ms()
        replies = await send_all(self.client, [
            ("ZADD", RELAYS, now, self.holder),
            ("ZREMRANGEBYSCORE", RELAYS, "-inf", now - 3 * self.lease_ms),
            ("ZCARD", RELAYS),
        ])  # fmt: skip
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return math.ceil(len(self.parts) / max(1, int(replies[2])))

    async def renew(self) -> list[PartitionKeys]:
        """Keep the leases held, take free ones up to the share, give up the rest."""
        share = await self._share()
        keep = self.held[:share]
        extra = self.held[share:]
        if extra:
            await release_all(self.client, [p.outbox_lease for p in extra], self.holder)
        kept = await take_all(self.client, [p.outbox_lease for p in keep], self.holder,
                                self.lease_ms)  # fmt: skip
        held = [p for p, ok in zip(keep, kept, strict=True) if ok]
        free = [p for p in self.parts if p not in held and p not in extra]
        if len(held) < share and free:
            taken = await self._take(free, share - len(held))
            held += taken
        if {p.tag for p in held} != {p.tag for p in self.held}:
            self.log.info("relay holds outboxes", partitions=[p.tag for p in held],
                          share=share)  # fmt: skip
        self.held = held
        return held

    async def _take(self, free: Sequence[PartitionKeys], room: int) -> list[PartitionKeys]:
        """Take up to ``room`` of the free leases (rotated, so relays start apart)."""
        start = hash(self.holder) % len(free)
        order = [*free[start:], *free[:start]]
        taken: list[PartitionKeys] = []
        while order and len(taken) < room:
            chunk, order = order[: room - len(taken)], order[room - len(taken) :]
            got = await take_all(self.client, [p.outbox_lease for p in chunk], self.holder,
                                   self.lease_ms)  # fmt: skip
            taken += [p for p, ok in zip(chunk, got, strict=True) if ok]
        return taken

    async def round(self) -> int:
        """Forward what the held outboxes hold now (one bounded batch each); how many left."""
        done = 0
        for part in list(self.held):
            report = await box.forward(
                self.client, part, count=PER_ROUND, max_attempts=self.max_attempts,
                actor=self.holder,
            )  # fmt: skip
            self.forwarded += report.forwarded
            self.sent_back += len(report.refused)
            for entry, error in report.refused:
                self.log.info("forwarded output refused; its handler runs again",
                              partition=part.tag, target=entry.tag, message_id=entry.message_id,
                              error=str(error))  # fmt: skip
            for entry_id, reason in report.dead:
                self.log.error("outbox entry dead-lettered", partition=part.tag,
                               entry_id=entry_id, reason=reason)  # fmt: skip
            done += report.done
        return done

    async def run(self, stopping: asyncio.Event) -> None:
        """Hold leases and forward until ``stopping`` (the bot then calls ``finish``)."""
        renew_every = self.lease_ms / 3000
        renewed = 0.0
        pause = 0.1
        loaded = False
        while not stopping.is_set():
            try:
                if not loaded:  # on every node: a replica promoted later has them
                    await load_all(self.client)
                    loaded = True
                if time.monotonic() - renewed >= renew_every:
                    await self.renew()
                    renewed = time.monotonic()
                moved = await self.round()
                pause = 0.1
            except NETWORK_ERRORS as exc:
                self.log.warning("relay lost the server; retrying", error=str(exc),
                                 pause_s=pause)  # fmt: skip
                renewed = 0.0
                await self._sleep(stopping, pause)
                pause = min(pause * 2, 5.0)
                continue
            if not moved:
                await self._sleep(stopping, min(self.interval, renew_every), wakes=True)

    async def finish(self) -> None:
        """Forward what the held outboxes still hold (bounded), then free their leases.

        For a stopping bot, after its last commit; what another bot's commits add later is
        that bot's relay's, or whoever takes the lease next.
        """
        with contextlib.suppress(*NETWORK_ERRORS, ResponseError):
            for _ in range(10):
                if not await self.round():
                    break
            await release_all(self.client, [p.outbox_lease for p in self.held], self.holder)
            await send_all(self.client, [("ZREM", RELAYS, self.holder)])
        self.held = []

    async def _sleep(self, stopping: asyncio.Event, seconds: float, *, wakes: bool = False) -> None:
        waits = [asyncio.ensure_future(stopping.wait())]
        if wakes:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            self._wake.clear()


__all__ = ["PER_ROUND", "RELAYS", "OutboxRelay", "check_slots"]
