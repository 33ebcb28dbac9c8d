"""Leases: exclusive access to a named thing, held by one token at a time, for a while.

A lease is one string key holding its holder's token and expiring after a time to live: take
it (``SET NX PX``; the holder may take it again), renew it while working, release it when
done. A holder that crashes stops renewing, so its lease expires and another can take it.

A lease alone cannot stop a holder that paused past its ttl from writing after the next
holder started; that is what the commit's fence is for (``Commit.fence``): the commit that
carries a handler's outputs checks, inside the same atomic script, that the lease is still
held by this token, and releases it, or writes nothing. ``handlers.exclusive`` takes a lease
before a handler runs and fences its commit; the cleaner uses one to have a single leader.

``take_all`` and ``release_all`` do the same for many keys in one round trip (on a cluster,
one write per node that owns some of them): the outbox relays hold one lease per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import weakref
from collections.abc import AsyncIterator, Sequence

import redis.asyncio
import redis.exceptions
from redis.exceptions import NoScriptError

from streamcqrs.streams._wire import send_all
from streamcqrs.streams.envelope import as_str
from streamcqrs.streams.scripts import script

PROCESS = f"{os.getpid()}.{secrets.token_hex(4)}"
"""Part of every token this process makes: two processes never make the same one."""

_waiting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _queue(key: str) -> asyncio.Lock:
    """This event loop's lock for waiting on ``key``: one waiter per process asks the server."""
    loop = asyncio.get_running_loop()
    locks = _waiting.setdefault(loop, {})
    lock = locks.get(key)
    if lock is None:
        lock = locks[key] = asyncio.Lock()
    return lock


class Lease:
    """Exclusive access under ``key`` for holder ``token``, expiring ``ttl_ms`` after a take."""

    def __init__(self, client: redis.asyncio.Redis, key: str, token: str, ttl_ms: int) -> None:
        if ttl_ms < 1:
            raise ValueError(f"a lease's ttl must be at least 1 ms, not {ttl_ms}")
        self.client = client
        self.key = key
        self.token = token
        self.ttl_ms = ttl_ms

    async def _call(self, action: str) -> bool:
        reply = await script("lease").run(
            self.client, [self.key], [action, self.token, self.ttl_ms]
        )
        return bool(int(reply))

    async def take(self) -> bool:
        """Take the lease if it is free (or already this token's); True if held now."""
        return await self._call("take")

    async def renew(self) -> bool:
        """Restart the ttl if this token still holds the lease; False if it lost it."""
        return await self._call("renew")

    async def release(self) -> bool:
        """Free the lease if this token holds it; False if it was not held by this token."""
        return await self._call("release")

    async def holder(self) -> str | None:
        """The token holding the lease now, or None."""
        found = await self.client.get(self.key)
        return None if found is None else as_str(found)

    async def wait(self, within: float, *, pause: tuple[float, float] = (0.002, 0.025)) -> bool:
        """Take the lease, waiting up to ``within`` seconds for the holder to let it go.

        Within one process only one waiter per key asks the server (the others queue on a
        local lock), so a burst of handlers waiting for one key costs the server one poll
        every few milliseconds per process, not one per handler. Polls back off from
        ``pause[0]`` to ``pause[1]`` seconds, with jitter.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        if await self.take():
            return True
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())), _queue(self.key):
                wait = pause[0]
                while not await self.take():
                    await asyncio.sleep(wait * (0.5 + random.random() / 2))
                    wait = min(wait * 2, pause[1])
                return True
        except TimeoutError:
            return False

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[asyncio.Event]:
        """Renew the lease every third of its ttl while the block runs.

        Yields an event that is set if a renewal finds the lease lost (the holder should stop:
        its commit would be refused anyway).
        """
        lost = asyncio.Event()

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.ttl_ms / 3000)
                try:
                    if not await self.renew():
                        lost.set()
                        return
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    continue  # the next renewal tries again; the ttl covers two misses

        task = asyncio.create_task(renew())
        try:
            yield lost
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _each(
    client: redis.asyncio.Redis, action: str, keys: Sequence[str], token: str, ttl_ms: int
) -> list[bool]:
    lease = script("lease")
    calls = [("EVALSHA", lease.sha, 1, key, action, token, ttl_ms) for key in keys]
    replies = await send_all(client, calls)
    if any(isinstance(r, NoScriptError) for r in replies):  # a new or promoted node
        await lease.load(client)
        replies = await send_all(client, calls)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return [bool(int(r)) for r in replies]


async def take_all(
    client: redis.asyncio.Redis, keys: Sequence[str], token: str, ttl_ms: int
) -> list[bool]:
    """``Lease.take`` for each of ``keys`` at once; per key, whether ``token`` holds it now."""
    return await _each(client, "take", keys, token, max(1, ttl_ms)) if keys else []


async def release_all(client: redis.asyncio.Redis, keys: Sequence[str], token: str) -> None:
    """``Lease.release`` for each of ``keys`` at once (those others hold are left alone)."""
    if keys:
        await _each(client, "release", keys, token, 0)


__all__ = ["PROCESS", "Lease", "release_all", "take_all"]
