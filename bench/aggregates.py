"""Case 5: loading an aggregate of 10,000 events, with and without snapshots."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio

from bench.apps import Counted, Counter
from bench.meter import empty
from streamcqrs.streams import Commit, Subsystem, SubsystemKeys


async def _measure(url: str, events: int, every: int, repeats: int) -> dict[str, float]:
    client = redis.asyncio.Redis.from_url(url)
    store = Subsystem("benchagg", client).aggregates(Counter)
    plain, snapped = "plain", "snapped"
    for name, snapshot_every in ((plain, 0), (snapped, every)):
        state = Counter(id=name)
        for start in range(0, events, every):
            batch = [Counted(n=1) for _ in range(min(every, events - start))]
            await store.append(name, batch, expected_version=state.version)
            state.fold(batch)
            if snapshot_every:
                await store.snapshot(state)
    timings: dict[str, float] = {}
    for name, use in ((plain, False), (snapped, True)):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            loaded = await store.load(name, use_snapshot=use)
            best = min(best, time.perf_counter() - t)
            if loaded.total != events or loaded.version != events:
                raise RuntimeError(f"{name} loaded {loaded.total}/{loaded.version}, not {events}")
        timings[name] = best * 1000
    await client.aclose()
    return {"without_ms": timings[plain], "with_ms": timings[snapped]}


def load_times(
    url: str, events: int = 10_000, every: int = 100, repeats: int = 3
) -> dict[str, float]:
    """Best-of-``repeats`` load time (ms) without and with a snapshot every ``every`` events."""
    return asyncio.run(_measure(url, events, every, repeats))


async def _append_memory(url: str, aggregates: int, events: int) -> dict[str, float]:
    with redis.Redis.from_url(url) as admin:
        empty(admin)
    client = redis.asyncio.Redis.from_url(url)
    store = Subsystem("benchmem", client).aggregates(Counter)
    for n in range(aggregates):
        await store.append(f"acct-{n}", [Counted(n=1)], expected_version=0)
    before = int((await client.info("memory"))["used_memory"])
    keys = int(await client.dbsize())
    per = events // aggregates
    keys_ = SubsystemKeys("benchmem")
    for round_ in range(per):
        # One connection, one call per round: no client buffers in the figure.
        commit = Commit()
        for n in range(aggregates):
            aggregate_id = f"acct-{n}"
            envelopes = store.envelopes(aggregate_id, [Counted(n=round_)])
            commit.append(keys_, aggregate_id, envelopes, round_ + 1)
        await commit.run(client)
    after = int((await client.info("memory"))["used_memory"])
    new_keys = int(await client.dbsize()) - keys
    await client.aclose()
    return {"memory_b": (after - before) / (per * aggregates), "keys": new_keys}


def append_memory(url: str, aggregates: int = 100, events: int = 20_000) -> dict[str, float]:
    """Server memory per event appended to aggregates that already exist (bytes), and the
    keys those appends added (none expected: each event goes into its aggregate's list and
    the subsystem's event stream)."""
    return asyncio.run(_append_memory(url, aggregates, events))
