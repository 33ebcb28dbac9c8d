"""Two processes racing try_handle over the same records claim each one exactly once.

Real server only: the point is that claims from separate processes, on separate connections,
are arbitrated by the server (the consumer group, and claim.lua's atomic status check).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from streamcqrs.streams import Kind
from streamcqrs.streams.handling import Action, HandlingStore, Status
from tests.messages import Ping
from tests.support import Backend, Run

RECORDS = 1000
PARTITIONS = 2
ROOT = Path(__file__).resolve().parents[1]

# One racer: waits for the start signal, then either try_handles as a consumer of ``group``
# until the stream stays quiet, or (group "-") claims every record directly in an order of
# its own, and prints the message ids it claimed as JSON. Bounded by reads and by time.
RACER = """
import asyncio, json, random, sys, time
import redis, redis.asyncio
import tests.messages  # registers test.Ping for decoding
from streamcqrs.streams import Kind, SubsystemKeys
from streamcqrs.streams.handling import Claim, HandlingStore

url, group, consumer, partitions, records = sys.argv[1:6]

async def claim_all(store):
    # The same records as _put_records, shuffled differently in each racer so the two
    # meet on records all along rather than one trailing the other.
    todo = [(f"m{n:04d}", f"order-{n}" if n % 2 else "") for n in range(int(records))]
    random.Random(consumer).shuffle(todo)
    claimed, skipped = [], 0
    for at in range(0, len(todo), 10):
        chunk = todo[at : at + 10]
        for (record, _), (outcome, _) in zip(chunk, await store.claim(chunk, actor=consumer)):
            if outcome is Claim.CLAIMED:
                claimed.append(record)
            else:
                skipped += 1
    return claimed, skipped

async def main():
    client = redis.asyncio.Redis.from_url(url)
    keys = SubsystemKeys("race", int(partitions))
    store = HandlingStore(client, keys, Kind.CLIENT_OPERATIONS, "email")
    with redis.Redis.from_url(url) as sync:
        sync.rpush("race:ready", consumer)
        if not sync.blpop("race:go", timeout=20):
            sys.exit("no start signal")
    if group == "-":
        claimed, skipped = await claim_all(store)
        await client.aclose()
        print(json.dumps({"claimed": claimed, "skipped": skipped}))
        return
    claimed, skipped, quiet, deadline = [], 0, 0, time.monotonic() + 60
    for _ in range(10_000):
        if quiet >= 3 or time.monotonic() > deadline:
            break
        got = await store.try_handle(group, consumer, count=25, block_ms=50)
        assert not got.blocked and not got.invalid
        quiet = 0 if got.records or got.skipped else quiet + 1
        claimed += [r.envelope.message_id for r in got.records]
        skipped += len(got.skipped)
    await client.aclose()
    print(json.dumps({"claimed": claimed, "skipped": skipped}))

asyncio.run(main())
"""


def _race(url: str, groups: tuple[str, str]) -> list[dict[str, Any]]:
    """Start two racers (one per group given, "-" = claim directly), release them together,
    and return what each claimed and skipped."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, url, group, f"racer-{n}", str(PARTITIONS), str(RECORDS)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, group in enumerate(groups)
    ]
    try:
        with redis.Redis.from_url(url) as admin:
            for _ in procs:
                assert admin.blpop("race:ready", timeout=30), "a racer did not start"
            admin.rpush("race:go", *["go"] * len(procs))
        out = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=90)
            assert 0 == proc.returncode, stderr
            out.append(json.loads(stdout))
        return out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def _put_records(real: Backend, run: Run[None]) -> list[str]:
    sub = real.subsystem("race", partitions=PARTITIONS)
    writer = sub.writer(Kind.CLIENT_OPERATIONS)
    ids = [f"m{n:04d}" for n in range(RECORDS)]

    async def put_all() -> None:
        for n, message_id in enumerate(ids):
            # Half with an object id, half partitioned by message id.
            obj = f"order-{n}" if n % 2 else None
            await writer.put(Ping(n=n), object_id=obj, message_id=message_id)

    run(put_all())
    return ids


@pytest.mark.parametrize(
    ("groups", "arbiter"),
    [
        (("email", "email"), "the consumer group"),
        (("email-a", "email-b"), "the status check"),
        (("-", "-"), "the status check"),
    ],
    ids=["one-group", "two-groups", "direct-claims"],
)
def test_two_processes_claim_each_record_exactly_once(
    real: Backend, run: Run[None], groups: tuple[str, str], arbiter: str
) -> None:
    """Two processes racing over 1,000 records claim each exactly once: with try_handle in
    one consumer group, in two groups (each reads every record; claim.lua arbitrates), or
    claiming directly in different orders (contending on records throughout)."""
    assert real.url is not None
    ids = _put_records(real, run)

    racers = _race(real.url, groups)

    first, second = (racer["claimed"] for racer in racers)
    assert set() == set(first) & set(second), f"claimed twice despite {arbiter}"
    assert sorted(ids) == sorted(first + second)
    if arbiter == "the status check":
        # Each racer read all 1,000 records, so every record was contended for: what one
        # claimed the other skipped.
        assert [RECORDS, RECORDS] == [len(r["claimed"]) + r["skipped"] for r in racers]
    sub = real.subsystem("race", partitions=PARTITIONS)
    store = HandlingStore(sub.client, sub.keys, Kind.CLIENT_OPERATIONS, "email")

    async def check() -> None:
        composite = await store.composite(
            [(m, f"order-{n}" if n % 2 else m) for n, m in enumerate(ids)]
        )
        assert {Status.RUNNING: RECORDS} == dict(composite.counts)
        for n in (0, 1, RECORDS - 1):
            history = await store.history(ids[n], f"order-{n}" if n % 2 else None)
            assert [Action.CLAIM] == [e.action for e in history]

    run(check())
