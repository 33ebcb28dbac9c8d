"""Two processes racing to settle the same 1,000 records complete each exactly once.

Real server only: the point is that status changes from separate processes, on separate
connections, are arbitrated by the server (commit.lua checks the stored status in the same
script that changes it). Bots meet this race when one message is put twice, or when a record
is settled by an operator while a bot handles it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from streamcqrs.streams import Kind
from streamcqrs.streams.handling import HandlingStore
from streamcqrs.streams.statuses import Action, Status
from tests.support import Backend, Run, sync_client

RECORDS = 1000
PARTITIONS = 2
ROOT = Path(__file__).resolve().parents[1]

# One racer: waits for the start signal, then completes every record in an order of its own,
# 10 commits per script call, and prints the message ids it completed and how many it was
# refused as JSON.
RACER = """
import asyncio, json, random, sys
from streamcqrs.streams import Commit, Kind, Settings, SubsystemKeys
from streamcqrs.streams.commit import run_commits
from streamcqrs.streams.errors import InvalidTransition
from streamcqrs.streams.statuses import Action

url, consumer, partitions, records = sys.argv[1:5]

async def main():
    client = Settings(url=url).async_client()  # a cluster client on a cluster
    keys = SubsystemKeys("race", int(partitions))
    todo = [(f"m{n:04d}", f"order-{n}" if n % 2 else "") for n in range(int(records))]
    random.Random(consumer).shuffle(todo)
    with Settings(url=url).client() as sync:
        sync.rpush("race:ready", consumer)
        if not sync.blpop("race:go", timeout=20):
            sys.exit("no start signal")
    completed, refused = [], 0
    for at in range(0, len(todo), 10):
        chunk = todo[at : at + 10]
        commits = []
        for record, obj in chunk:
            commit = Commit()
            part = keys.for_object(obj or record)
            commit.settle(Action.COMPLETE, actor=consumer,
                          record=(part, Kind.CLIENT_OPERATIONS, "email", record))
            commits.append(commit)
        for (record, _), result in zip(chunk, await run_commits(client, commits)):
            if isinstance(result, InvalidTransition):
                refused += 1
            elif isinstance(result, Exception):
                raise result
            else:
                completed.append(record)
    await client.aclose()
    print(json.dumps({"completed": completed, "refused": refused}))

asyncio.run(main())
"""


def _race(url: str) -> list[dict[str, Any]]:
    """Start two racers, release them together, and return what each did."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, url, f"racer-{n}", str(PARTITIONS), str(RECORDS)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        with sync_client(url) as admin:
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


def test_two_processes_complete_each_record_exactly_once(real: Backend, run: Run[None]) -> None:
    """Two processes completing the same 1,000 records in different orders: each record is
    completed by exactly one of them, the other is refused, and its history has one entry."""
    assert real.url is not None
    ids = [f"m{n:04d}" for n in range(RECORDS)]

    first, second = _race(real.url)

    assert set() == set(first["completed"]) & set(second["completed"])
    assert sorted(ids) == sorted(first["completed"] + second["completed"])
    assert RECORDS == len(first["completed"]) + first["refused"]
    assert RECORDS == len(second["completed"]) + second["refused"]
    sub = real.subsystem("race", partitions=PARTITIONS)
    store = HandlingStore(sub.client, sub.keys, Kind.CLIENT_OPERATIONS, "email")

    async def check() -> None:
        composite = await store.composite(
            [(m, f"order-{n}" if n % 2 else m) for n, m in enumerate(ids)]
        )
        assert {Status.COMPLETED: RECORDS} == dict(composite.counts)
        for n in (0, 1, RECORDS - 1):
            history = await store.history(ids[n], f"order-{n}" if n % 2 else None)
            assert [Action.COMPLETE] == [e.action for e in history]

    run(check())
