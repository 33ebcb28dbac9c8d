"""``streamcqrs run|status``: help on every command, status figures, the supervisor's restarts,
several worker processes, and the removal of dead consumers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import redis

from streamcqrs.streams.keys import Kind, SubsystemKeys
from tests.botapps import ROOT, SUBSYSTEM, BotProcess, Do, Doomed, ns_of, put_many, wait_until
from tests.support import Backend

PART = SubsystemKeys(SUBSYSTEM).partition(0)
OPS = PART.stream(Kind.CLIENT_OPERATIONS)
EVENTS = PART.stream(Kind.EVENTS)


def bots_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``streamcqrs ARGS`` to completion (bounded) and capture its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    return subprocess.run(
        [sys.executable, "-m", "streamcqrs", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_help_describes_every_command_and_option() -> None:
    """--help lists run and status; each command's help describes each of its options."""
    top = bots_cli("--help")
    assert 0 == top.returncode
    assert "run" in top.stdout and "status" in top.stdout
    run = bots_cli("run", "--help").stdout
    for option in ("--processes", "--concurrency", "--only", "--url", "--visibility-timeout",
                   "--max-attempts", "--grace"):  # fmt: skip
        assert option in run
    status = bots_cli("status", "--help").stdout
    assert "--url" in status and "--json" in status


def test_a_wrong_app_is_reported_not_run() -> None:
    """An app spec that is not MODULE:APP fails at once with a message saying the form."""
    result = bots_cli("run", "tests.botapps", "--url", "unix:///nonexistent")
    assert 0 != result.returncode
    assert "MODULE:APP" in result.stderr


def test_status_shows_length_lag_pending_and_dead_letters(real: Backend, tmp_path: Path) -> None:
    """After a bot handled 20 operations and dead-lettered a doomed one, status reports per
    group the stream length, no lag, nothing pending, and the one dead letter."""
    client = real.sync_client()
    put_many(client, [*((Do(n=n), str(n)) for n in range(20)), (Doomed(n=1), "d")])
    url = real.url or ""
    with BotProcess(url, tmp_path / "bot.log", "--max-attempts", "1") as bot:
        wait_until(
            lambda: client.xlen(EVENTS) >= 20
            and client.xlen(PART.stream(Kind.DEAD_LETTERS)) >= 1,
            "the operations and the dead letter", 30, bot,
        )  # fmt: skip
        wait_until(lambda: all(int(g["pending"]) == 0 for g in client.xinfo_groups(OPS)),
                   "the acks", 10, bot)  # fmt: skip
    result = bots_cli("status", "tests.botapps:app", "--url", url, "--json")
    assert 0 == result.returncode, result.stderr
    rows = {row["group"]: row for row in json.loads(result.stdout)}
    assert {"do", "doomed", "flaky", "later", "slow", "crash", "steered"} == set(rows)
    expected = {"stream": OPS, "group": "do", "length": 21, "lag": 0, "pending": 0,
                "oldest_pending_s": None, "delayed": 0, "dead_letters": 1}  # fmt: skip
    assert expected == {k: v for k, v in rows["do"].items() if k != "consumers"}
    table = bots_cli("status", "tests.botapps:app", "--url", url)
    assert "pending" in table.stdout and OPS in table.stdout


def test_the_supervisor_restarts_a_worker_that_dies(real: Backend, tmp_path: Path) -> None:
    """kill -9 one of two worker processes: the supervisor starts a new one and work goes on
    (the dead worker's entries are taken over after the visibility timeout)."""
    client = real.sync_client()
    url = real.url or ""
    args = ("--processes", "2", "--visibility-timeout", "1")
    with BotProcess(url, tmp_path / "bot.log", *args) as bot:
        supervisor = psutil.Process(bot.proc.pid)
        wait_until(lambda: len(workers(supervisor)) == 2, "two workers", 30, bot)
        put_many(client, ((Do(n=n), str(n)) for n in range(50)))
        wait_until(lambda: client.xlen(EVENTS) >= 50, "the first operations", 30, bot)
        victim = workers(supervisor)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(workers(supervisor)) == 2 and victim not in workers(supervisor),
            "a replacement worker", 30, bot,
        )  # fmt: skip
        put_many(client, ((Do(n=n), str(n)) for n in range(50, 100)))
        wait_until(lambda: client.xlen(EVENTS) >= 100, "the later operations", 30, bot)
        assert "worker died; restarting it" in bot.text()
        status, _ = bot.terminate(timeout=20)
        log = bot.text()
    assert 0 == status, log[-4000:]
    assert list(range(100)) == sorted(ns_of(client, EVENTS))


def workers(supervisor: psutil.Process) -> list[int]:
    """Pids of the supervisor's worker processes (not multiprocessing's resource tracker)."""
    out = []
    for child in supervisor.children():
        try:
            if (
                child.is_running()
                and child.status() != psutil.STATUS_ZOMBIE
                and any("spawn_main" in part for part in child.cmdline())
            ):
                out.append(child.pid)
        except psutil.Error:
            continue  # it exited while we looked
    return out


def test_dead_consumers_are_removed_once_idle_with_nothing_pending(
    real: Backend, tmp_path: Path
) -> None:
    """A consumer left behind by a process that exited (nothing pending) is deleted from
    the group after --dead-consumer-after seconds; the live bot's own consumer stays."""
    client = real.sync_client()
    client.xgroup_create(OPS, "do", id="0", mkstream=True)
    client.xgroup_createconsumer(OPS, "do", "gone-host-1-0")
    with BotProcess(real.url or "", tmp_path / "bot.log", "--dead-consumer-after", "1") as bot:
        wait_until(lambda: consumers(client) != {"gone-host-1-0"}, "the bot to join", 30, bot)
        wait_until(lambda: "gone-host-1-0" not in consumers(client), "the removal", 15, bot)
        assert 1 == len(consumers(client))


def consumers(client: redis.Redis) -> set[str]:
    """Names of the consumers of group ``do``."""
    return {c["name"].decode() for c in client.xinfo_consumers(OPS, "do")}
