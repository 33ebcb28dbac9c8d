"""Where a new concern starts, and broadcast concerns, with real bots on a real server.

A concern added to a running system with ``start="now"`` handles none of the records put
before it and the next one; with ``start=<datetime>`` exactly those put at or after it; the
default is the beginning for operation streams and now for event streams, and the group's
creation is logged with where it starts. A broadcast concern is handled by every bot process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamcqrs.bots import Bot, BotConfig
from streamcqrs.domain import Aggregate, Event, Operation, message
from streamcqrs.handlers import App, Context
from streamcqrs.streams import Kind, Subsystem, SubsystemKeys
from streamcqrs.streams.envelope import as_str
from tests.commands import streamcqrs
from tests.reliability.bots import BotProcess, wait_until
from tests.support import Backend, Run

KEYS = SubsystemKeys("late")


@message("late.Job")
class Job(Operation):
    """An operation a late concern may or may not see."""

    n: int


@message("late.Happened")
class Happened(Event):
    """An event every broadcast process handles."""

    n: int


def seen_key(concern: str) -> str:
    """Where a test concern notes the n of each record it handled."""
    return f"late-test:{concern}"


def noting(concern: str) -> Callable[[Job, Context], Any]:
    """A handler that notes each record's n in a set named after its concern."""

    async def note(op: Job, ctx: Context) -> None:
        await ctx.client.sadd(seen_key(concern), op.n)

    note.__name__ = concern
    return note


def put_jobs(real: Backend, run: Run[Any], numbers: range) -> None:
    """A client puts Job(n) for each n."""
    writer = Subsystem("late", real.client()).writer("client-ops")

    async def put_all() -> None:
        for n in numbers:
            await writer.put(Job(n=n), object_id=n)

    run(put_all())


def run_bot_until(
    real: Backend,
    run: Run[Any],
    app: App,
    done: Callable[[], bool],
    then: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run a bot of ``app`` in this process until ``done()`` (bounded: 30 s); ``then`` runs
    once the bot has created every group it needs."""

    async def scenario() -> None:
        bot = Bot(app, BotConfig(url=real.url, block_ms=100, mover_interval=0.05))
        task = asyncio.create_task(bot.run())
        deadline = time.monotonic() + 30
        try:
            groups = {(s.key, s.group) for s in bot.sources}
            while then is not None:
                assert time.monotonic() < deadline, "the bot made no groups in 30 s"
                made = {(key, as_str(g["name"])) for key, _ in groups
                        for g in await bot.client.xinfo_groups(key)}  # fmt: skip
                if groups <= made:
                    await then()
                    break
                await asyncio.sleep(0.02)
            while not done():
                assert time.monotonic() < deadline, "the bot did not finish in 30 s"
                assert not task.done(), task
                await asyncio.sleep(0.02)
        finally:
            bot.stop()
            await task
            await bot.client.aclose()

    run(scenario())


def test_a_concern_starting_now_skips_the_past_and_handles_the_next(
    real: Backend, run: Run[Any]
) -> None:
    """1,000 records before a start="now" concern exists: it handles none of them, then the
    next one; a concern with the default (the beginning, on an operation stream) handles all."""
    client = real.sync_client()
    put_jobs(real, run, range(1000))
    app = App("late")
    app.handler(Job, stream="late/client-ops", concern="fresh", start="now")(noting("fresh"))
    app.handler(Job, stream="late/client-ops", concern="whole")(noting("whole"))

    async def late_put() -> None:
        await Subsystem("late", real.client()).writer("client-ops").put(Job(n=1000))

    def done() -> bool:
        return client.scard(seen_key("fresh")) >= 1 and client.scard(seen_key("whole")) >= 1001

    run_bot_until(real, run, app, done, then=late_put)

    assert {b"1000"} == client.smembers(seen_key("fresh"))
    assert 1001 == client.scard(seen_key("whole"))


def test_a_concern_starting_at_a_time_handles_exactly_the_records_from_then(
    real: Backend, run: Run[Any]
) -> None:
    """500 records, a moment t, 500 more: a concern declared with start=t handles exactly
    the 500 put at or after t."""
    client = real.sync_client()
    put_jobs(real, run, range(500))
    time.sleep(0.01)  # the moment must fall between two records' millisecond ids
    moment = datetime.now(UTC)
    time.sleep(0.01)
    put_jobs(real, run, range(500, 1000))
    app = App("late")
    app.handler(Job, stream="late/client-ops", concern="since", start=moment)(noting("since"))

    run_bot_until(real, run, app, lambda: client.scard(seen_key("since")) >= 500)
    time.sleep(0.2)  # nothing more arrives: the group started after the first 500

    assert {str(n).encode() for n in range(500, 1000)} == client.smembers(seen_key("since"))


def test_the_default_start_is_now_on_events_and_the_beginning_on_operations() -> None:
    """Without start=, a concern on an event stream starts now, on an operation stream at
    the beginning; a datetime becomes the id just before its millisecond."""
    app = App("late")
    app.handler(Job, stream="late/client-ops", concern="ops")(noting("ops"))
    app.handler(Happened, stream="late/events", concern="facts")(noting("facts"))
    app.handler(Happened, stream="late/events", concern="history", start="beginning")(
        noting("history")
    )
    at = datetime.fromtimestamp(1_700_000_000.5, UTC)
    app.handler(Job, stream="late/client-ops", concern="since", start=at)(noting("since"))
    starts = {spec.concern: spec.start_from() for spec in app.handlers}
    assert {"ops": "0", "facts": "$", "history": "0",
            "since": "1700000000499-18446744073709551615"} == starts  # fmt: skip


class Counter(Aggregate):
    """An aggregate only so events can be appended."""

    def apply(self, event: Event) -> None:
        """Nothing to fold."""


BROADCAST = App("late")


@BROADCAST.handler(Happened, stream="late/events", concern="cache", broadcast=True,
                   start="beginning")  # fmt: skip
async def cache(event: Happened, ctx: Context) -> None:
    """Count each event once per bot process (as a cache invalidation would run)."""
    await ctx.client.hincrby("late-test:cache", f"{event.n}", 1)


def test_a_broadcast_concern_is_handled_by_every_process_and_its_groups_go(
    real: Backend, run: Run[Any], tmp_path: Path
) -> None:
    """Three bot processes with a broadcast concern: each of 100 events is handled three
    times (once per process, each through a group of its own); the groups of the processes
    are removed when they stop."""
    client = real.sync_client()
    events = KEYS.partition(0).stream(Kind.EVENTS)
    url = real.url or ""
    bots = [BotProcess("tests.test_bots_start:BROADCAST", url, log=tmp_path / f"b{n}.log")
            for n in range(3)]  # fmt: skip
    try:
        for bot in bots:
            bot.start()
        wait_until(lambda: client.exists(events) and len(client.xinfo_groups(events)) == 3,
                   "three broadcast groups", 30)  # fmt: skip
        store = Subsystem("late", real.client()).aggregates(Counter)

        async def publish() -> None:
            for n in range(100):
                await store.append(f"c-{n}", [Happened(n=n)], expected_version=0)

        run(publish())
        wait_until(
            lambda: all(int(v) == 3 for v in client.hvals("late-test:cache"))
            and client.hlen("late-test:cache") == 100,
            "every event three times", 30,
        )  # fmt: skip
        for bot in bots:
            bot.stop()
    finally:
        for bot in bots:
            bot.kill()
    assert {str(n).encode(): b"3" for n in range(100)} == client.hgetall("late-test:cache")
    assert [] == client.xinfo_groups(events)


def test_an_operator_creates_a_group_at_a_time_and_moves_it(real: Backend, run: Run[Any]) -> None:
    """``streamcqrs groups create ... --from T`` makes a concern start with the records from
    T on; ``groups move ... --from now`` skips what waits; ``list`` shows where each group is;
    a group that exists cannot be created again, nor a missing one moved (one line, exit 2)."""
    client = real.sync_client()
    url = real.url or ""
    put_jobs(real, run, range(10))
    time.sleep(0.01)
    moment = int(time.time() * 1000)
    time.sleep(0.01)
    put_jobs(real, run, range(10, 15))
    ops = KEYS.partition(0).stream(Kind.CLIENT_OPERATIONS)

    created = streamcqrs("groups", "create", "late/client-ops", "audit", "--from", str(moment),
                         "--url", url)  # fmt: skip
    assert 0 == created.returncode, created.stderr
    ((_, first),) = client.xreadgroup("audit", "probe", {ops: ">"}, count=100)
    assert [str(n).encode() for n in range(10, 15)] == [fields[b"obj"] for _, fields in first]
    put_jobs(real, run, range(100, 103))  # waiting when the group is moved to now
    again = streamcqrs("groups", "create", "late/client-ops", "audit", "--from", "now",
                       "--url", url)  # fmt: skip
    assert (2, 1) == (again.returncode, len(again.stderr.strip().splitlines()))
    assert "already exists" in again.stderr
    moved = streamcqrs("groups", "move", "late/client-ops", "audit", "--from", "now",
                       "--url", url)  # fmt: skip
    assert 0 == moved.returncode, moved.stderr
    put_jobs(real, run, range(15, 16))
    ((_, after),) = client.xreadgroup("audit", "probe", {ops: ">"}, count=100)
    assert [b"15"] == [fields[b"obj"] for _, fields in after]
    missing = streamcqrs("groups", "move", "late/client-ops", "nobody", "--from", "now",
                         "--url", url)  # fmt: skip
    assert 2 == missing.returncode and "does not exist" in missing.stderr
    listed = streamcqrs("groups", "list", "late/client-ops", "--json", "--url", url)
    assert ["audit"] == [row["group"] for row in map(json.loads, listed.stdout.splitlines())]
