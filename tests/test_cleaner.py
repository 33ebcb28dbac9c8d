"""The cleaner: retention policies keep the server's memory bounded; one leader at a time.

10,000 records handled by a bot process (10 of them Failed), each leaving a tag index key on
its operation and on the note it puts: after one cleaner cycle (``streamcqrs clean``) the
server holds at most ``BOUND`` keys, the Failed records keep their status, history and dead
letter, and ``show`` says a trimmed record was cleaned. A cleaner SIGKILLed mid-cycle leaves
consistent state, and the next one (after the lease expires) ends with the same result. Bots
clean on their own when a cycle is due; aggregates compact behind their snapshots.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from streamcqrs.bots.cleaner import Cleaner, leader_key, state_key
from streamcqrs.bots.logging import get_logger
from streamcqrs.handlers import App
from streamcqrs.streams import Commit, Kind, Subsystem, SubsystemKeys
from streamcqrs.streams.envelope import encode
from streamcqrs.streams.errors import DecodeError
from streamcqrs.streams.statuses import Action, Status, decode_stored
from tests.commands import ROOT, clean_env, streamcqrs
from tests.deferredapps import Counted, Counter, Job
from tests.reliability.bots import BotProcess, stop_all, wait_until
from tests.support import Backend, Run

RECORDS = 10_000
FAILING = {n for n in range(RECORDS) if n % 1000 == 7}
PART = SubsystemKeys("tidy").partition(0)
OPS = PART.stream(Kind.CLIENT_OPERATIONS)
STATUS = PART.handling_status(Kind.CLIENT_OPERATIONS, "do_job")
BOUND = 12
"""Keys the tidy app may hold after a cycle, however many records it handled: its two
streams, their two cleaner notes, the status hash (of the Failed records), the cleaner's
state, the dead-letter stream with its latest-by-id index and its two tag indexes (concern,
error type: as many as there are concerns and error types, not records), and two spare for
the recent-put hashes a standalone put leaves for two minutes. After the 10,000 records it
held 20,001 keys; a run leaves 10."""


def _put_jobs(client: redis.Redis) -> dict[int, str]:
    """Put the jobs (tagged job=n, object id n), 500 per call; their message ids."""
    keys = SubsystemKeys("tidy")
    ids: dict[int, str] = {}
    for start in range(0, RECORDS, 500):
        commit = Commit(replay_safe=False)
        for n in range(start, min(RECORDS, start + 500)):
            envelope = encode(Job(n=n, fail=n in FAILING), object_id=str(n),
                              tags=(("job", str(n)),))  # fmt: skip
            ids[n] = envelope.message_id
            commit.put(keys, Kind.CLIENT_OPERATIONS, envelope)
        commit.run_sync(client)
    return ids


def _handled(client: redis.Redis, url: str, log: Path) -> dict[int, str]:
    """Put the jobs and let a bot process handle them all; their message ids."""
    bot = BotProcess("tests.deferredapps:tidy", url, "--max-attempts", "1", "--block-ms",
                     "100", log=log).start()  # fmt: skip
    try:
        bot.wait_ready()
        # The bot leads a first cycle at start (none ever ran); the jobs come after it, so
        # the only cycle that cleans them is the test's.
        wait_until(lambda: client.hexists(state_key("tidy"), "finished"), "the bot's first cycle",
                   30)  # fmt: skip
        ids = _put_jobs(client)
        wait_until(lambda: client.hlen(STATUS) >= RECORDS, f"{RECORDS} handled", 120,
                   lambda: log.read_text()[-2000:])  # fmt: skip
        wait_until(lambda: all(int(g["pending"]) == 0 for g in client.xinfo_groups(OPS)),
                   "no pending entries", 30)  # fmt: skip
    finally:
        assert [0] == stop_all([bot])
    time.sleep(1.2)  # past keep_done_for and max_age (1 s)
    return ids


def _assert_cleaned(client: redis.Redis, ids: dict[int, str]) -> None:
    """What one whole cycle leaves: few keys, the Failed records whole, nothing done."""
    keys = sorted(k.decode() for k in client.scan_iter(count=1000))
    assert len(keys) <= BOUND, keys
    stored = client.hgetall(STATUS)
    assert {ids[n].encode() for n in FAILING} == set(stored)
    for n in FAILING:
        status, history = decode_stored(stored[ids[n].encode()])
        assert Status.FAILED == status
        assert [Action.FAIL] == [h.action for h in history]
        assert f"job {n} was meant to fail" in history[-1].details
    assert len(FAILING) == client.xlen(PART.stream(Kind.DEAD_LETTERS))
    assert 0 == client.xlen(OPS) == client.xlen(PART.stream(Kind.INTERNAL_OPERATIONS))
    kept = [k for k in keys if ":dead" not in k]  # dead letters are the operator's
    assert [] == [k for k in kept if ":tag:" in k or ":latest" in k or ":obj:" in k]
    print(f"\nkeys left: {keys}")


def test_one_cycle_brings_the_key_count_back_within_a_fixed_bound(
    real: Backend, tmp_path: Path
) -> None:
    """Over 20,000 keys after 10,000 handled records; at most BOUND after one cycle, with
    every Failed record, its history and its dead letter kept."""
    assert real.url
    client = real.sync_client()
    ids = _handled(client, real.url, tmp_path / "bots.log")
    before = client.dbsize()
    assert before > 2 * RECORDS
    result = streamcqrs("clean", "tests.deferredapps:tidy", url=real.url, timeout=120)
    assert 0 == result.returncode, result.stderr
    assert "cleaned tidy:" in result.stdout
    _assert_cleaned(client, ids)
    state = {k.decode(): v.decode() for k, v in client.hgetall(state_key("tidy")).items()}
    assert int(state["finished"]) >= int(state["started"])
    assert 2 * RECORDS - len(FAILING) == int(state["trimmed"])  # ops, and notes of done ones
    print(f"\ncleaner: keys {before} -> {client.dbsize()} (bound {BOUND}); {state}")

    trimmed = streamcqrs("show", "tidy/client-ops", ids[1], url=real.url)
    assert 0 == trimmed.returncode, trimmed.stderr
    assert f"{ids[1]}: cleaned;" in trimmed.stdout
    assert "trimmed by retention" in trimmed.stdout
    failed = streamcqrs("show", "tidy/client-ops", ids[7], url=real.url)
    assert 0 == failed.returncode, failed.stderr
    assert "do_job: status Failed" in failed.stdout
    assert "job 7 was meant to fail" in failed.stdout


def test_a_leader_killed_mid_cycle_is_taken_over_with_the_same_result(
    real: Backend, tmp_path: Path
) -> None:
    """A cleaner SIGKILLed mid-cycle (its lease then lapses) leaves consistent state; the
    next one waits for the lease, runs the whole cycle, and leaves what an uninterrupted
    cycle leaves."""
    assert real.url
    client = real.sync_client()
    ids = _handled(client, real.url, tmp_path / "bots.log")
    slow = subprocess.Popen(
        [sys.executable, "-m", "streamcqrs", "clean", "tests.deferredapps:tidy"],
        cwd=ROOT, env=clean_env(REDIS_URL=real.url, TIDY_CLEAN_PAUSE="0.2"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: 0 < client.hlen(STATUS) < RECORDS - 1000, "the cycle under way", 60)
        os.killpg(slow.pid, signal.SIGKILL)
        slow.wait(10)
    finally:
        if slow.poll() is None:
            os.killpg(slow.pid, signal.SIGKILL)
            slow.wait(10)
    left = client.hlen(STATUS)
    assert len(FAILING) < left < RECORDS, "the kill did not land mid-cycle"
    assert client.exists(leader_key("tidy")), "the dead leader's lease should still be held"
    started = time.monotonic()
    result = streamcqrs("clean", "tests.deferredapps:tidy", url=real.url, timeout=120)
    assert 0 == result.returncode, result.stderr
    assert time.monotonic() - started >= 0.5  # it waited for the dead leader's lease
    _assert_cleaned(client, ids)


def test_bots_clean_on_their_own_when_a_cycle_is_due(real: Backend, tmp_path: Path) -> None:
    """Two bots with a 0.5 s cleaner period: done records lose their status soon after
    keep_done_for, with no command run; Failed ones stay."""
    assert real.url
    client = real.sync_client()
    env = {"TIDY_CLEAN_EVERY": "0.5"}
    log = tmp_path / "bots.log"
    bots = [
        BotProcess("tests.deferredapps:tidy", real.url, "--max-attempts", "1", log=log)
        for _ in range(2)
    ]
    for bot in bots:
        bot.command = ["env", *(f"{k}={v}" for k, v in env.items()), *bot.command]
        bot.start()
    try:
        subsystem = Subsystem("tidy", real.client(), sync_client=client)
        writer = subsystem.sync_writer("client-ops")
        ids = {n: writer.put(Job(n=n, fail=n == 7), object_id=n).message_id for n in range(50)}
        wait_until(lambda: client.hexists(STATUS, ids[7]), "the failing job handled", 30)
        wait_until(lambda: client.hkeys(STATUS) == [ids[7].encode()],
                   "done statuses forgotten by the bots' cleaner", 30,
                   lambda: log.read_text()[-2000:])  # fmt: skip
    finally:
        stop_all(bots)
    assert Status.FAILED == decode_stored(client.hget(STATUS, ids[7]))[0]


def test_show_says_a_status_was_cleaned(real: Backend, run: Run[None]) -> None:
    """A record whose entry is kept but whose done status the cleaner removed shows, for its
    concern, status 'cleaned' and why (not an empty history)."""
    assert real.url
    client = real.sync_client()
    subsystem = Subsystem("tidy", real.client(), sync_client=client)
    put = subsystem.sync_writer("client-ops").put(Job(n=1), object_id=1)
    client.xgroup_create(OPS, "do_job", id="0")
    client.xreadgroup("do_job", "me", {OPS: ">"})
    client.xack(OPS, "do_job", put.entry_id)
    commit = Commit()
    commit.settle(Action.COMPLETE, record=(PART, Kind.CLIENT_OPERATIONS, "do_job",
                                           put.message_id))  # fmt: skip
    commit.run_sync(client)
    app = App("tidy")
    app.retention("tidy/client-ops", keep_done_for=0.0)
    cleaner = Cleaner(real.client(), app, {}, consumer="test", log=get_logger())
    time.sleep(0.01)

    report = run(cleaner.once(5.0))  # type: ignore[func-returns-value]
    assert report is not None and 1 == report.forgotten
    shown = streamcqrs("show", "tidy/client-ops", put.entry_id, url=real.url)
    assert 0 == shown.returncode, shown.stderr
    assert "do_job: read  status cleaned (status and history removed by retention" in shown.stdout


def test_aggregates_compact_behind_their_snapshots(real: Backend, run: Run[Any]) -> None:
    """An aggregate of 10 events with a snapshot at version 6 keeps only events 7..10 behind
    an H6 header: its version and state are unchanged, appends go on at version 10, a second
    cycle drops nothing, and loading at a version before the snapshot is refused."""
    client = real.client()
    counters = Subsystem("tally", client).aggregates(Counter)
    app = App("tally")
    app.retention("tally/snapshots", compact_aggregates=True)
    cleaner = Cleaner(client, app, {}, consumer="test", log=get_logger())
    key = SubsystemKeys("tally").partition(0).aggregate("c")

    async def scenario() -> dict[str, Any]:
        for n in range(6):
            await counters.append("c", [Counted(n=n, value=n + 1)], expected_version=n)
        await counters.snapshot(await counters.load("c"))
        for n in range(6, 10):
            await counters.append("c", [Counted(n=n, value=n + 1)], expected_version=n)
        full = await counters.load("c", use_snapshot=False)
        first = await cleaner.once(5.0)
        second = await cleaner.once(5.0)
        after = await counters.load("c")
        await counters.append("c", [Counted(n=10, value=11)], expected_version=10)
        with pytest.raises(DecodeError, match="compacted"):
            await counters.load("c", at_version=3, use_snapshot=False)
        return {"full": full, "after": after, "first": first, "second": second,
                "head": await client.lindex(key, 0), "length": await client.llen(key),
                "version": await counters.version("c")}  # fmt: skip

    got = run(scenario())
    assert (6, 0) == (got["first"].compacted, got["second"].compacted)
    assert b"H6" == got["head"]
    assert 6 == got["length"]  # the header, events 7..10, and the one appended after
    assert got["full"].model_dump() == got["after"].model_dump()
    assert 11 == got["version"]
    assert 10 == got["after"].value
