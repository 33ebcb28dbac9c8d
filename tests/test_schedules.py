"""Recurring timers: an operation put exactly once per due time, however many bots run.

Three bot processes with a 1 s schedule put 10 +/- 1 operations in 10 s with no due time
twice, also when one of them is SIGKILLed halfway; bots of the app without the schedule put
nothing more; after an outage ``skip`` puts none of the missed due times and ``catch_up`` all
of them; cron expressions give the due times croniter gives.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from streamcqrs.bots.logging import get_logger
from streamcqrs.bots.timers import Timers
from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers import App
from streamcqrs.handlers.schedules import Schedule
from streamcqrs.streams import Kind, SubsystemKeys, now_ms
from streamcqrs.streams.envelope import entries, to_record
from tests.deferredapps import Tick, make_tick
from tests.reliability.bots import BotProcess, stop_all, wait_until
from tests.support import Backend, Run

PART = SubsystemKeys("clock").partition(0)
TICKS = PART.stream(Kind.INTERNAL_OPERATIONS)


def _dues(client: redis.Redis) -> list[int]:
    """The due time of every Tick put so far."""
    out = []
    for entry_id, raw in entries(client.xrange(TICKS)):
        message = to_record(TICKS, entry_id, raw).message
        assert isinstance(message, Tick)
        out.append(message.due)
    return out


def _bots(url: str, app: str, log: Path) -> list[BotProcess]:
    return [
        BotProcess(app, url, "--block-ms", "100", "--visibility-timeout", "2", log=log).start()
        for _ in range(3)
    ]


@pytest.mark.parametrize("kill", [False, True], ids=["three-bots", "one-killed"])
def test_three_bots_put_a_one_second_schedule_once_per_due_time(
    real: Backend, tmp_path: Path, kill: bool
) -> None:
    """Over 10 s, 10 +/- 1 Ticks, each due time once; with one bot SIGKILLed at 5 s too."""
    assert real.url
    client = real.sync_client()
    log = tmp_path / "bots.log"
    bots = _bots(real.url, "tests.deferredapps:tick_app", log)
    try:
        wait_until(lambda: len(_dues(client)) >= 1, "the first tick", 30,
                   lambda: log.read_text()[-2000:])  # fmt: skip
        start = now_ms()
        time.sleep(5)
        if kill:
            bots[1].kill()
        time.sleep(5)
        end = now_ms()
        time.sleep(1.5)  # what was due by `end` has been put
        codes = stop_all(bots)
    finally:
        stop_all(bots)
    dues = _dues(client)
    assert [] == [due for due, n in Counter(dues).items() if n > 1], "a due time put twice"
    window = [due for due in dues if start < due <= end]
    assert 9 <= len(window) <= 11, window
    assert all(due % 1000 == 0 for due in dues)
    assert ([0, None, 0] if kill else [0, 0, 0]) == [None if b.kills else c
                                                     for b, c in zip(bots, codes, strict=True)]


def test_removing_the_schedule_from_the_app_stops_it(real: Backend, tmp_path: Path) -> None:
    """Bots of the app without the schedule put no Tick, though the schedule's cursor stays."""
    assert real.url
    client = real.sync_client()
    log = tmp_path / "bots.log"
    bots = _bots(real.url, "tests.deferredapps:tick_app", log)
    try:
        wait_until(lambda: len(_dues(client)) >= 2, "two ticks", 30)
    finally:
        stop_all(bots)
    before = len(_dues(client))
    quiet = _bots(real.url, "tests.deferredapps:quiet_app", log)
    try:
        for bot in quiet:
            bot.wait_ready()
        time.sleep(3)
    finally:
        stop_all(quiet)
    assert before == len(_dues(client))
    assert client.hexists(PART.schedules, "tick")


def test_misfire_policies_after_an_outage() -> None:
    """Due times missed by more than the grace (half the interval): skip puts none of them
    and moves on (the next due time is put on time); catch_up puts every one, oldest first,
    up to its limit."""
    skip = Schedule.every(1.0, Tick(due=0), stream="clock/internal-ops", name="s")
    catch_up = Schedule.every(1.0, Tick(due=0), stream="clock/internal-ops", name="c",
                              misfire="catch_up")  # fmt: skip
    limited = Schedule.every(1.0, Tick(due=0), stream="clock/internal-ops", name="l",
                             misfire="catch_up", catch_up_limit=3)  # fmt: skip
    last, now = 100_000, 106_700  # six due times passed, the newest 700 ms ago
    assert ([], 106_000, 6) == skip.due(last, now)
    assert ([101_000 + k * 1000 for k in range(6)], 106_000, 0) == catch_up.due(last, now)
    assert ([104_000, 105_000, 106_000], 106_000, 3) == limited.due(last, now)
    assert ([107_000], 107_000, 0) == skip.due(106_000, 107_010)  # on time again
    assert ([106_000], 106_000, 5) == skip.due(last, 106_400)  # the newest is within grace


@pytest.mark.parametrize("misfire", ["skip", "catch_up"])
def test_timers_apply_the_misfire_policy_after_an_outage(
    real: Backend, run: Run[None], misfire: str
) -> None:
    """The schedule's cursor says the last due time put was 5.5 s ago (no bot ran since):
    one round of the timers puts none of the missed due times with skip (at most the newest,
    if within grace) and every one of them, in order, with catch_up."""
    app = App("clock")
    schedule = app.every(1.0, make_tick, stream="clock/internal-ops", name="tick",
                         misfire=misfire)  # type: ignore[arg-type]  # fmt: skip
    client = real.client()
    times: dict[str, int] = {}

    async def scenario() -> None:
        times["last"] = schedule.last_at_or_before(now_ms() - 5500)
        await client.hset(PART.schedules, "tick", str(times["last"]))
        timers = Timers(client, [schedule], {}, types=app.types, log=get_logger())
        times["before"] = now_ms()
        await timers.round()
        times["after"] = now_ms()

    run(scenario())
    dues = _dues(real.sync_client())
    newest = schedule.last_at_or_before(times["after"])
    if misfire == "skip":
        assert len(dues) <= 1, dues
        assert all(times["before"] - 500 <= due <= newest for due in dues)
    else:
        assert list(range(times["last"] + 1000, newest + 1, 1000)) == dues
        assert len(dues) >= 5
    cursor = int(real.sync_client().hget(PART.schedules, "tick") or 0)
    assert cursor == schedule.last_at_or_before(cursor) >= times["before"] - 1000


def test_cron_due_times_follow_the_expression_in_its_time_zone() -> None:
    """'0 * * * *' in Europe/Berlin is due on the hour; the due times of a window are those
    hours (the DST night has no 02:00); bad expressions and zones are refused."""
    cron = Schedule.cron_schedule(
        "0 * * * *", Tick(due=0), stream="clock/internal-ops", name="hourly",
        tz="Europe/Berlin", misfire="catch_up",
    )  # fmt: skip
    night = int(datetime(2026, 3, 29, 0, 30, tzinfo=UTC).timestamp() * 1000)  # 01:30 CET
    first = cron.next_after(night)
    assert datetime(2026, 3, 29, 1, 0, tzinfo=UTC) == datetime.fromtimestamp(first / 1000, UTC)
    due, cursor, skipped = cron.due(night, night + 3 * 3_600_000)
    assert [first, first + 3_600_000, first + 7_200_000] == due
    assert (cursor, skipped) == (due[-1], 0)
    with pytest.raises(ConfigurationError, match="not a cron expression"):
        Schedule.cron_schedule("every hour", Tick(due=0), stream="clock/internal-ops", name="x")
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        Schedule.cron_schedule("0 * * * *", Tick(due=0), stream="clock/internal-ops",
                               name="x", tz="Mars/Olympus")  # fmt: skip
    with pytest.raises(ConfigurationError, match="puts operations"):
        Schedule.every(1.0, Tick(due=0), stream="clock/events", name="x")
