"""Crashes, shutdowns and a wiped server, with real ``streamcqrs run`` processes.

What a bot committed exists exactly once whatever happens to the bot: a kill -9 mid-work is
finished by another bot, a SIGTERM drains in-flight work and exits 0, a handler slower than
the visibility timeout keeps its entry, and a FLUSHALL does not stop a running bot.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import redis

from streamcqrs.streams.deadletter import read_dead_letters_sync
from streamcqrs.streams.keys import Kind, SubsystemKeys
from tests.botapps import SUBSYSTEM, BotProcess, Crash, Do, Slow, ns_of, put_many, wait_until
from tests.support import Backend

PART = SubsystemKeys(SUBSYSTEM).partition(0)
OPS = PART.stream(Kind.CLIENT_OPERATIONS)
EVENTS = PART.stream(Kind.EVENTS)
NOTES = PART.stream(Kind.INTERNAL_OPERATIONS)
DEAD = PART.stream(Kind.DEAD_LETTERS)


def pending_of(client: redis.Redis, group: str) -> int:
    """Entries delivered to ``group`` and not acked."""
    for info in client.xinfo_groups(OPS):
        if info["name"].decode() == group:
            return int(info["pending"])
    return 0


def assert_exactly_once(client: redis.Redis, count: int) -> None:
    """Every Do(n) for n < count committed its event and its note exactly once."""
    events, notes = Counter(ns_of(client, EVENTS)), Counter(ns_of(client, NOTES))
    expected = Counter(range(count))
    assert expected == events
    assert expected == notes
    lengths = [client.llen(key) for key in client.scan_iter(PART.aggregate("*"))]
    assert [1] * count == lengths


def test_a_bot_killed_mid_work_is_finished_by_another_exactly_once(
    real: Backend, tmp_path: Path
) -> None:
    """kill -9 a bot (supervisor and worker) in the middle of 2,000 operations; a second bot
    takes over what the first left pending and finishes: each operation's event and note
    exist exactly once."""
    client = real.sync_client()
    put_many(client, ((Do(n=n, pause=0.01), str(n)) for n in range(2000)))
    url = real.url or ""
    args = ("--visibility-timeout", "1", "--concurrency", "16")
    with BotProcess(url, tmp_path / "first.log", *args) as first:
        wait_until(lambda: client.xlen(EVENTS) >= 300, "the first bot to get going", 30, first)
        first.kill()
    done_by_first = client.xlen(EVENTS)
    assert done_by_first < 2000
    with BotProcess(url, tmp_path / "second.log", *args) as second:
        wait_until(
            lambda: client.xlen(EVENTS) >= 2000 and pending_of(client, "do") == 0,
            "the second bot to finish", 45, second,
        )  # fmt: skip
        assert "took over entries" in second.text()
    assert_exactly_once(client, 2000)


def test_sigterm_drains_in_flight_work_and_exits_0(real: Backend, tmp_path: Path) -> None:
    """SIGTERM while handlers run: the bot stops reading, lets them commit, exits 0 within
    its grace period; a later bot handles the rest; nothing is lost or done twice."""
    client = real.sync_client()
    put_many(client, ((Do(n=n, pause=0.3), str(n)) for n in range(300)))
    url = real.url or ""
    with BotProcess(url, tmp_path / "first.log", "--grace", "5", "--concurrency", "32") as first:
        wait_until(lambda: client.xlen(EVENTS) >= 1, "handlers to be running", 30, first)
        status, took = first.terminate(timeout=15)
        log = first.text()
    assert (0, True) == (status, took < 5 + 3), log[-2000:]
    assert 0 == pending_of(client, "do")  # in-flight work was committed, not abandoned
    assert client.xlen(EVENTS) < 300
    with BotProcess(url, tmp_path / "second.log") as second:
        wait_until(lambda: client.xlen(EVENTS) >= 300, "the rest to be handled", 30, second)
        wait_until(lambda: pending_of(client, "do") == 0, "the last acks", 10, second)
    assert_exactly_once(client, 300)


def test_work_longer_than_the_grace_period_is_released_to_the_next_bot(
    real: Backend, tmp_path: Path
) -> None:
    """Handlers still running when the grace period ends (an async one and a blocking one
    in a thread) are cancelled or abandoned and their entries released: the bot exits 0 in
    time, and the next bot takes them over at once, not after the 30 s visibility timeout."""
    client = real.sync_client()
    put_many(client, [(Do(n=0, pause=30), "0"), (Slow(n=0, seconds=30), "s")])
    url = real.url or ""
    with BotProcess(url, tmp_path / "first.log", "--grace", "1") as first:
        wait_until(
            lambda: pending_of(client, "do") == 1 and pending_of(client, "slow") == 1,
            "the handlers to start", 30, first,
        )  # fmt: skip
        status, took = first.terminate(timeout=10)
        assert (0, True) == (status, took < 1 + 3), first.text()[-2000:]
    assert 0 == client.xlen(EVENTS)
    put_many(client, [(Do(n=1), "1")])
    started = time.monotonic()
    # The released entry is taken over within a third of the default 30 s timeout.
    with BotProcess(url, tmp_path / "second.log") as second:
        wait_until(lambda: client.xlen(EVENTS) >= 1, "the new operation", 30, second)
        wait_until(lambda: "took over entries" in second.text(), "the take-over", 15, second)
    assert time.monotonic() - started < 25
    assert [1] == ns_of(client, EVENTS)  # n=0 is taken over, and sleeps again


def test_a_handler_slower_than_the_visibility_timeout_keeps_its_entry(
    real: Backend, tmp_path: Path
) -> None:
    """A blocking handler that runs 3 s with a 1 s visibility timeout, two bots running: its
    bot keeps extending the claim, so the other never takes it over; one note results."""
    client = real.sync_client()
    put_many(client, [(Slow(n=5, seconds=3), "5")])
    url = real.url or ""
    args = ("--visibility-timeout", "1")
    with (
        BotProcess(url, tmp_path / "a.log", *args) as a,
        BotProcess(url, tmp_path / "b.log", *args) as b,
    ):
        wait_until(lambda: client.xlen(NOTES) >= 1, "the slow handler to commit", 30, a)
        wait_until(lambda: pending_of(client, "slow") == 0, "its ack", 10, a)
        time.sleep(1.5)  # a duplicate would land within a visibility timeout or so
        logs = a.text() + b.text()
    assert 1 == client.xlen(NOTES)
    assert "took over entries" not in logs
    assert "taken over by another consumer" not in logs


def test_an_entry_that_kills_its_bot_every_time_is_dead_lettered(
    real: Backend, tmp_path: Path
) -> None:
    """An operation whose handler kills the worker: the supervisor restarts the worker, the
    entry is taken over again, and once delivered more than --max-attempts times it is
    Failed and dead-lettered instead of killing the bot forever; other work goes on."""
    client = real.sync_client()
    put_many(client, [(Crash(n=1), "1")])
    args = ("--visibility-timeout", "1", "--max-attempts", "2")
    with BotProcess(real.url or "", tmp_path / "bot.log", *args) as bot:
        wait_until(lambda: client.xlen(DEAD) >= 1, "the crash loop to be cut", 40, bot)
        put_many(client, [(Do(n=2), "2")])
        wait_until(lambda: client.xlen(EVENTS) >= 1, "other work", 20, bot)
        assert bot.alive()
    (stored,) = read_dead_letters_sync(client, SubsystemKeys(SUBSYSTEM))
    assert ("crash", "HandlerError") == (stored.letter.concern, stored.letter.error_type)
    assert "without a commit" in stored.letter.reason
    assert 0 == pending_of(client, "crash")


def test_a_running_bot_carries_on_after_flushall(real: Backend, tmp_path: Path) -> None:
    """FLUSHALL wipes the streams and the consumer groups under a running bot: it recreates
    its groups and handles what is put afterwards, without a restart."""
    client = real.sync_client()
    put_many(client, ((Do(n=n), str(n)) for n in range(10)))
    with BotProcess(real.url or "", tmp_path / "bot.log") as bot:
        wait_until(lambda: client.xlen(EVENTS) >= 10, "the first operations", 30, bot)
        client.flushall()
        # Put at once: whether the bot recreates its groups before or after, they start
        # at id 0, so these are read either way.
        put_many(client, ((Do(n=n), str(n)) for n in range(10, 20)))
        wait_until(lambda: client.xlen(EVENTS) >= 10, "the operations after FLUSHALL", 30, bot)
        assert bot.alive()
        assert "consumer group is gone; recreating it" in bot.text()
    assert list(range(10, 20)) == sorted(ns_of(client, EVENTS))
