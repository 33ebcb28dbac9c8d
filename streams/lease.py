"""Leases: one holder of a key at a time, across processes, for as long as it keeps renewing.

A lease is a string key holding its holder's name, with a time to live. ``hold`` takes the
leases that are free and renews those the holder has, in one round trip for many keys (on a
cluster, one write per node that owns some of them); ``give_up`` frees them at once. A holder
that dies stops renewing, and its leases fall free after their time to live. Taking and
renewing is ``lease.lua``: a holder never renews a lease that lapsed and went to another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio
from redis.exceptions import NoScriptError

from streamcqrs.streams._wire import send_all
from streamcqrs.streams.scripts import script


async def _run(
    client: redis.asyncio.Redis, keys: Sequence[str], holder: str, ttl_ms: int
) -> list[Any]:
    lease = script("lease")
    action = "take" if ttl_ms else "release"
    calls = [("EVALSHA", lease.sha, 1, key, action, holder, ttl_ms) for key in keys]
    replies = await send_all(client, calls)
    if any(isinstance(r, NoScriptError) for r in replies):  # a new or restarted node
        await lease.load(client)
        replies = await send_all(client, calls)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def hold(
    client: redis.asyncio.Redis, keys: Sequence[str], holder: str, ttl_ms: int
) -> list[bool]:
    """Take or renew the lease of each key for ``ttl_ms``; per key, whether ``holder`` has it."""
    if not keys:
        return []
    return [bool(int(r)) for r in await _run(client, keys, holder, max(1, ttl_ms))]


async def give_up(client: redis.asyncio.Redis, keys: Sequence[str], holder: str) -> None:
    """Free the leases ``holder`` has among ``keys`` (the others are left alone)."""
    if keys:
        await _run(client, keys, holder, 0)


__all__ = ["give_up", "hold"]
