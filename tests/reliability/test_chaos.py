"""Chaos: three bots handle a stream of operations while a driver SIGKILLs them at random.

Afterwards every operation must have exactly one Completed status with exactly one completion
in its history, each of its two outputs must exist exactly once, and nothing may be left
pending. The CI run uses 2,500 operations and 8 kills; ``STREAMCQRS_LONG=1`` runs the full
10,000 operations and 20+ kills (the figures in tests/reliability/RESULTS.md).
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from streamcqrs.streams import Kind, Subsystem
from streamcqrs.streams.keys import SubsystemKeys
from streamcqrs.streams.statuses import Action, HistoryEntry, Status, decode_stored
from tests.reliability.apps import Do
from tests.reliability.bots import (
    BotProcess,
    holding_work,
    objects_in,
    pending,
    stop_all,
    wait_until,
)
from tests.support import Backend, Run, async_client, sync_client

LONG = bool(os.environ.get("STREAMCQRS_LONG"))
OPERATIONS = 10_000 if LONG else 2_500
KILLS = 24 if LONG else 8
RATE = 500.0 if LONG else 250.0
"""Operations put per second, so the producer runs about as long as the kills go on."""
GAP = (0.5, 1.0)
"""Seconds between kills: long enough for a restarted bot to be handling again."""

KEYS = SubsystemKeys("chaos").partition(0)
STREAM = KEYS.stream(Kind.CLIENT_OPERATIONS)


def _produce(url: str, count: int, message_ids: dict[int, str], errors: list[str]) -> None:
    """Put ``count`` operations at RATE per second, recording each one's message id."""
    with sync_client(url) as client:
        subsystem = Subsystem("chaos", async_client(url), sync_client=client)
        writer = subsystem.sync_writer(Kind.CLIENT_OPERATIONS)
        start = time.monotonic()
        try:
            for n in range(count):
                result = writer.put(Do(n=n, pad="x" * 60), object_id=n)
                message_ids[n] = result.message_id
                ahead = start + (n + 1) / RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except Exception as exc:  # reported by the test, which fails on any
            errors.append(repr(exc))


def _victim(
    client: redis.Redis, bots: list[BotProcess], rng: random.Random, until: float
) -> BotProcess:
    """A bot holding work right now, so the kill lands on work in flight.

    On a loaded machine a restarted bot takes seconds to start; a kill picked blindly can
    hit only starting or idle bots, and then no entry is ever taken over (it happened under
    two CPU hogs: "no kill landed on work in flight"). If none holds work before ``until``,
    any bot.
    """
    while time.monotonic() < until:
        busy = holding_work(client, STREAM, bots)
        if busy:
            return rng.choice(busy)
        time.sleep(0.02)
    return rng.choice(bots)


def _history(client: redis.Redis, record: str) -> list[HistoryEntry]:
    stored = client.hget(KEYS.handling_status(Kind.CLIENT_OPERATIONS, "do"), record)
    return [step for entry in decode_stored(stored)[1] for step in entry.steps()]


@pytest.mark.slow
@pytest.mark.single_server(
    "its kill timing suits one server's bot start; test_cluster_notification kills on a cluster"
)
def test_kill_nine_under_load_loses_and_duplicates_nothing(
    real: Backend, run: Run[Any], tmp_path: Path
) -> None:
    """SIGKILLed bots lose nothing and duplicate nothing: one completion, one of each output."""
    assert real.url
    rng = random.Random(20261123)
    log = tmp_path / "bots.log"
    bots = [
        BotProcess(
            "tests.reliability.apps:app", real.url, "--visibility-timeout", "1",
            "--block-ms", "100", "--concurrency", "32", log=log,
        ).start()
        for _ in range(3)
    ]  # fmt: skip
    message_ids: dict[int, str] = {}
    errors: list[str] = []
    producer = threading.Thread(
        target=_produce, args=(real.url, OPERATIONS, message_ids, errors), daemon=True
    )
    client = real.sync_client()
    try:
        producer.start()
        kills = 0
        # Kill while the producer runs, then keep killing until the count is reached.
        deadline = time.monotonic() + OPERATIONS / RATE + 60
        while kills < KILLS and time.monotonic() < deadline:
            time.sleep(rng.uniform(*GAP))
            victim = _victim(client, bots, rng, deadline)
            victim.kill()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.3))
            victim.start()
        killed = sum(bot.kills for bot in bots)
        producer.join(OPERATIONS / RATE + 60)
        assert not producer.is_alive(), "the producer did not finish"
        assert [] == errors

        done = lambda: len(objects_in(client, KEYS.stream(Kind.EVENTS), b"chaos.Done"))  # noqa: E731
        wait_until(lambda: done() >= OPERATIONS, f"{OPERATIONS} Done events", 120)
        wait_until(lambda: pending(client, STREAM) == 0, "no pending entries", 30)
        for bot in bots:
            bot.wait_ready()  # a bot stopped mid-start dies of the signal, not by choice
        codes = stop_all(bots)
    finally:
        stop_all(bots)

    assert KILLS == kills == killed
    assert [0, 0, 0] == codes

    events = objects_in(client, KEYS.stream(Kind.EVENTS), b"chaos.Done")
    notes = objects_in(client, KEYS.stream(Kind.INTERNAL_OPERATIONS), b"chaos.Note")
    expected = {f"job-{n}".encode(): 1 for n in range(OPERATIONS)}
    assert expected == dict(events), "each operation's event exactly once"
    assert {str(n).encode(): 1 for n in range(OPERATIONS)} == dict(notes)
    for aggregate in (f"job-{n}" for n in rng.sample(range(OPERATIONS), 50)):
        assert 1 == client.llen(KEYS.aggregate(aggregate))

    statuses = client.hgetall(KEYS.handling_status(Kind.CLIENT_OPERATIONS, "do"))
    assert {message_ids[n].encode() for n in range(OPERATIONS)} == set(statuses)
    assert {Status.COMPLETED} == {decode_stored(value)[0] for value in statuses.values()}
    completions = reclaims = 0
    for n in range(OPERATIONS):
        history = _history(client, message_ids[n])
        finished = [entry for entry in history if entry.action is Action.COMPLETE]
        assert 1 == len(finished), f"operation {n}: {history}"
        completions += len(finished)
        reclaims += sum(entry.action is Action.RECLAIM for entry in history)
    assert OPERATIONS == completions
    assert reclaims >= 1, "no kill landed on work in flight: the test proved nothing"
    assert 0 == pending(client, STREAM)
    print(
        f"\nchaos: operations={OPERATIONS} kills={kills} redeliveries={reclaims} "
        f"lost=0 duplicated=0"
    )


pytestmark = pytest.mark.timeout(300)
