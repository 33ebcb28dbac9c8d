"""Keeping consumer groups healthy: create them, take over the dead's work, tidy up.

* ``ensure_group`` creates a source's group (from the stream's start) if it is missing, at
  start and whenever the server answers NOGROUP (a FLUSHALL, a deleted stream).
* ``take_over`` claims entries pending longer than the visibility timeout on any consumer
  (a bot that died or hangs) with XAUTOCLAIM; entries whose payload was trimmed meanwhile
  come back as deleted ids and are acked so they leave the pending list.
* ``keep`` resets the idle time of this bot's own long-running entries (XCLAIM JUSTID to
  itself, only if it still owns them), so nobody takes them over while they run; ``release``
  does the opposite on shutdown, making them claimable at once.
* ``remove_dead_consumers`` deletes consumers with nothing pending that have been silent
  for long (a process that exited), so XINFO stays readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio

from streamcqrs.handlers.delivery import Source
from streamcqrs.streams import _replies
from streamcqrs.streams._ids import entry_key
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.envelope import Entry, as_str

RELEASED_IDLE_MS = 10**12
"""Idle time given to released entries: older than any visibility timeout."""


async def ensure_group(client: redis.asyncio.Redis, source: Source) -> bool:
    """Create the source's consumer group (and stream) where its handlers start (``"0"``: the
    beginning, ``"$"``: now, or after an id); True if it was created."""
    return await _replies.ensure_group(client, source.key, source.group, source.start_from)


async def take_over(
    client: redis.asyncio.Redis,
    source: Source,
    consumer: str,
    *,
    min_idle_ms: int,
    count: int,
    start: str = "0-0",
) -> tuple[str, list[Entry], list[str]]:
    """XAUTOCLAIM up to ``count`` entries idle over ``min_idle_ms``; ack trimmed ones.

    Returns the cursor to continue from ("0-0" when the scan is through), the claimed
    entries, and the ids found deleted.
    """
    reply: list[Any] = await client.xautoclaim(
        source.key, source.group, consumer, min_idle_ms, start_id=start, count=count
    )
    cursor = as_str(reply[0])
    claimed = [(eid, raw) for eid, raw in reply[1] if raw is not None]
    deleted = [as_str(eid) for eid in (reply[2] if len(reply) > 2 else [])]
    # Entries deleted from the stream but pending: Redis 7 already drops them from the PEL
    # in XAUTOCLAIM; older servers return them with no fields. Ack either way.
    deleted += [as_str(eid) for eid, raw in reply[1] if raw is None]
    if deleted:
        await client.xack(source.key, source.group, *deleted)
    return cursor, cast(list[Entry], claimed), deleted


async def delivery_counts(
    client: redis.asyncio.Redis, source: Source, found: Sequence[Entry]
) -> dict[str, int]:
    """How many times each of ``found`` (entries just taken over) was delivered."""
    if not found:
        return {}
    ids = [as_str(eid) for eid, _ in found]
    low, high = min(ids, key=entry_key), max(ids, key=entry_key)
    reply: list[Any] = await client.xpending_range(
        source.key, source.group, low, high, len(ids) * 4
    )
    wanted = set(ids)
    return {
        as_str(info["message_id"]): int(info["times_delivered"])
        for info in reply
        if as_str(info["message_id"]) in wanted
    }


async def keep(
    client: redis.asyncio.Redis,
    source: Source,
    consumer: str,
    entry_ids: Sequence[str],
    *,
    idle_ms: int = 0,
) -> list[str]:
    """Set the idle time of entries ``consumer`` still owns; return those it owns."""
    if not entry_ids:
        return []
    commit = Commit()
    commit.touch(source.key, source.group, consumer, entry_ids, idle_ms)
    (kept,) = await commit.run(client)
    return [as_str(eid) for eid in kept]


async def release(
    client: redis.asyncio.Redis, source: Source, consumer: str, entry_ids: Sequence[str]
) -> list[str]:
    """Make this consumer's entries claimable by any other bot at once (on shutdown)."""
    return await keep(client, source, consumer, entry_ids, idle_ms=RELEASED_IDLE_MS)


async def remove_group(client: redis.asyncio.Redis, source: Source) -> None:
    """Destroy the source's consumer group (a broadcast group, when its process stops)."""
    await client.xgroup_destroy(source.key, source.group)


async def remove_gone_broadcast_groups(
    client: redis.asyncio.Redis, source: Source, idle_ms: int
) -> list[str]:
    """Destroy the broadcast groups of ``source``'s concern whose processes are gone.

    A broadcast group is ``concern.<consumer>``; its process's consumer is idle (a live bot
    reads every block period) for ``idle_ms`` or it has none left.
    """
    prefix = f"{source.concern}."
    removed: list[str] = []
    for info in await client.xinfo_groups(source.key):
        name = as_str(info["name"])
        if not name.startswith(prefix) or name == source.group:
            continue
        consumers = await client.xinfo_consumers(source.key, name)
        if all(int(c.get("idle", 0) or 0) >= idle_ms for c in consumers):
            await client.xgroup_destroy(source.key, name)
            removed.append(name)
    return removed


async def remove_dead_consumers(
    client: redis.asyncio.Redis, source: Source, me: str, idle_ms: int
) -> list[str]:
    """Delete consumers of the group other than ``me`` with nothing pending, idle that long."""
    removed: list[str] = []
    for info in await client.xinfo_consumers(source.key, source.group):
        name = as_str(info["name"])
        # "idle" counts from the last attempted read or claim: a live bot, blocked in
        # XREADGROUP, keeps it low even when nothing arrives.
        idle = int(info.get("idle", 0) or 0)
        if name != me and int(info["pending"]) == 0 and idle >= idle_ms:
            await client.xgroup_delconsumer(source.key, source.group, name)
            removed.append(name)
    return removed


__all__ = [
    "RELEASED_IDLE_MS",
    "delivery_counts",
    "ensure_group",
    "keep",
    "release",
    "remove_dead_consumers",
    "remove_gone_broadcast_groups",
    "remove_group",
    "take_over",
]
