"""Delayed work: parked in the delayed set, moved into its stream when due, exactly once.

A delayed operation never runs before it is due and runs within 1 s after; delays survive a
bot restart (they live in Redis); two movers never both move one member.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis

from streamcqrs.bots.delayed import Mover
from streamcqrs.bots.logging import get_logger
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.delayed import Delayed
from streamcqrs.streams.envelope import decode, encode, entries, now_ms, parse
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.subsystem import Subsystem
from tests.botapps import SUBSYSTEM, BotProcess, Later, ns_of, wait_until
from tests.support import Backend

PART = SubsystemKeys(SUBSYSTEM).partition(0)
OPS = PART.stream(Kind.CLIENT_OPERATIONS)
EVENTS = PART.stream(Kind.EVENTS)
DELAYED = PART.delayed(Kind.CLIENT_OPERATIONS)


def put_later(real: Backend, n: int, due_ms: int) -> None:
    """A client puts Later(n) to run at ``due_ms``."""
    writer = Subsystem(SUBSYSTEM, real.client(), sync_client=real.sync_client())
    writer.sync_writer("client-ops").put(Later(n=n), object_id=n, execute_earliest=due_ms)


def ran_at(client: redis.Redis) -> dict[int, int]:
    """When each Later(n) ran (epoch ms), from the Done events."""
    return dict(zip(ns_of(client, EVENTS), ns_of(client, EVENTS, "at"), strict=True))


def test_a_delayed_operation_runs_when_due_and_not_before(real: Backend, tmp_path: Path) -> None:
    """Operations due 1.5 s and 2.5 s from now wait in the delayed set, not the stream, and
    each runs no earlier than due and within 1 s after."""
    client = real.sync_client()
    with BotProcess(real.url or "", tmp_path / "bot.log") as bot:
        wait_until(lambda: bool(client.exists(OPS)), "the bot's groups", 30, bot)
        dues = {1: now_ms() + 1500, 2: now_ms() + 2500}
        for n, due in dues.items():
            put_later(real, n, due)
        assert (2, 0) == (client.zcard(DELAYED), client.xlen(EVENTS))
        wait_until(lambda: client.xlen(EVENTS) >= 2, "both delayed operations", 15, bot)
    ran = ran_at(client)
    for n, due in dues.items():
        assert due <= ran[n] <= due + 1000, (n, due, ran[n])
    assert 0 == client.zcard(DELAYED)


def test_delays_survive_a_restart(real: Backend, tmp_path: Path) -> None:
    """A delayed operation parked while one bot ran, due after it stopped, is run by the
    next bot: the delay is kept in Redis, not in a process."""
    client = real.sync_client()
    url = real.url or ""
    with BotProcess(url, tmp_path / "first.log") as first:
        wait_until(lambda: bool(client.exists(OPS)), "the bot's groups", 30, first)
        due = now_ms() + 1000
        put_later(real, 9, due)
        status, _ = first.terminate(timeout=10)
    assert 0 == status
    assert (1, 0) == (client.zcard(DELAYED), client.xlen(EVENTS))
    while now_ms() < due:
        time.sleep(0.05)
    with BotProcess(url, tmp_path / "second.log") as second:
        wait_until(lambda: client.xlen(EVENTS) >= 1, "the parked operation", 30, second)
    assert [9] == ns_of(client, EVENTS)


def test_two_movers_never_move_one_member_twice(real: Backend, run: Any) -> None:
    """Two movers (as in two bots) race over 300 due members: each lands in the stream once,
    because each move TAKEs its member in the same atomic commit that puts it."""
    sync = real.sync_client()
    commit = Commit()
    for n in range(300):
        member = Delayed(Kind.CLIENT_OPERATIONS.value, encode(Later(n=n), object_id=str(n)))
        commit.delay(DELAYED, now_ms() - 10, member.pack())
    commit.run_sync(sync)
    sets = [(PART, Kind.CLIENT_OPERATIONS)]
    movers = [Mover(real.client(), sets, interval=0.05, log=get_logger()) for _ in range(2)]

    async def race() -> None:
        for _ in range(3):  # a round moves at most PER_ROUND (200) members per set
            await asyncio.gather(*(m.round() for m in movers))

    run(race())
    moved = [to_n(raw) for _, raw in entries(sync.xrange(OPS))]
    assert list(range(300)) == sorted(moved)
    assert 300 == sum(m.moved for m in movers)
    assert 0 == sync.zcard(DELAYED)


def to_n(raw: dict[bytes, bytes]) -> int:
    """The ``n`` of a Later entry."""
    message = decode(OPS, "", parse(OPS, "", raw))
    assert isinstance(message, Later)
    return message.n


def test_a_junk_delayed_member_is_dead_lettered_not_retried_forever(
    real: Backend, run: Any
) -> None:
    """A member that is not a packed put is taken out of the delayed set and kept as a dead
    letter; the good member beside it is moved."""
    sync = real.sync_client()
    good = Delayed(Kind.CLIENT_OPERATIONS.value, encode(Later(n=1), object_id="1")).pack()
    sync.zadd(DELAYED, {b"\x93junk": 1, good: 2})
    mover = Mover(real.client(), [(PART, Kind.CLIENT_OPERATIONS)], interval=0.05, log=get_logger())
    run(mover.round())
    assert (0, 1, 1) == (
        sync.zcard(DELAYED),
        sync.xlen(OPS),
        sync.xlen(PART.stream(Kind.DEAD_LETTERS)),
    )
