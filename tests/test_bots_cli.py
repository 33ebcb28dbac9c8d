"""``streamcqrs run|status``: help on every command, status figures, the supervisor's restarts,
several worker processes, the removal of dead consumers, and retry copies in ``tail``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import redis

from streamcqrs.streams.keys import Kind, SubsystemKeys
from tests.botapps import (
    SUBSYSTEM,
    BotProcess,
    Do,
    Doomed,
    Flaky,
    ns_of,
    put_many,
    wait_until,
)
from tests.commands import streamcqrs
from tests.support import Backend

PART = SubsystemKeys(SUBSYSTEM).partition(0)
OPS = PART.stream(Kind.CLIENT_OPERATIONS)
EVENTS = PART.stream(Kind.EVENTS)


def bots_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``streamcqrs ARGS`` to completion (bounded) and capture its output."""
    return streamcqrs(*args)


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
    group the stream length, no lag, nothing pending, and the one dead letter; once an
    operator archived it, no dead letter is counted (only open ones are)."""
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
    assert {"do", "doomed", "flaky", "later", "slow", "crash", "steered", "strict",
            "governed"} == set(rows)
    expected = {"stream": OPS, "group": "do", "length": 21, "lag": 0, "pending": 0,
                "oldest_pending_s": None, "delayed": 0, "dead_letters": 1, "outbox": 0,
                "outbox_oldest_s": None}  # fmt: skip
    assert expected == {k: v for k, v in rows["do"].items() if k != "consumers"}
    table = bots_cli("status", "tests.botapps:app", "--url", url)
    assert "pending" in table.stdout and OPS in table.stdout
    archived = bots_cli("dead-letters", "archive", SUBSYSTEM, "--all", "--url", url)
    assert 0 == archived.returncode, archived.stderr
    after = bots_cli("status", "tests.botapps:app", "--url", url, "--json")
    assert [0] * len(rows) == [row["dead_letters"] for row in json.loads(after.stdout)]


def test_the_supervisor_restarts_a_worker_that_dies(real: Backend, tmp_path: Path) -> None:
    """kill -9 one of two worker processes: the supervisor logs its death, starts a new one
    and work goes on (the dead worker's entries are taken over after the visibility timeout).

    Each wait reads one snapshot: two separate looks at the workers (one before the kill
    landed, one after) once let this test see a "replacement" that did not exist yet, and
    then find no restart in the log (the CI failure of 2026-11-30)."""
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
        wait_until(lambda: replaced(workers(supervisor), victim), "a replacement worker", 30, bot)
        wait_until(lambda: bot.text().count('"worker started"') == 3, "its log line", 30, bot)
        put_many(client, ((Do(n=n), str(n)) for n in range(50, 100)))
        wait_until(lambda: client.xlen(EVENTS) >= 100, "the later operations", 30, bot)
        assert 1 == bot.text().count("worker died; restarting it")
        status, _ = bot.terminate(timeout=20)
        log = bot.text()
    assert 0 == status, log[-4000:]
    assert list(range(100)) == sorted(ns_of(client, EVENTS))


def replaced(now: list[int], victim: int) -> bool:
    """Two workers, and the victim not among them: judged on one snapshot."""
    return len(now) == 2 and victim not in now


def test_a_stop_while_a_restart_waits_is_a_clean_stop(real: Backend, tmp_path: Path) -> None:
    """A worker that keeps dying at once is restarted after a growing pause (0.5, 1, 2 s);
    SIGTERM during that pause stops the running workers and exits 0 without starting the
    waiting one. Before, the dead worker's exit code made a clean stop exit 1."""
    with BotProcess(real.url or "", tmp_path / "bot.log", "--processes", "2") as bot:
        for deaths in (1, 2, 3):
            wait_until(lambda n=1 + deaths: len(started_pids(bot)) == n,  # type: ignore[misc]
                       f"worker start {deaths + 1}", 30, bot)  # fmt: skip
            os.kill(started_pids(bot)[-1], signal.SIGKILL)  # the newest: the same index each time
            wait_until(lambda d=deaths: bot.text().count("worker died") == d,  # type: ignore[misc]
                       f"death {deaths}", 30, bot)  # fmt: skip
        status, _ = bot.terminate(timeout=20)
        log = bot.text()
    assert 0 == status, log[-4000:]
    assert '"pause_s": 2.0' in log
    assert 4 == log.count('"worker started"'), log[-4000:]


def started_pids(bot: BotProcess) -> list[int]:
    """Pids of the workers the supervisor logged as started, in order."""
    lines = [json.loads(line) for line in bot.text().splitlines() if line.startswith("{")]
    return [line["pid"] for line in lines if line.get("event") == "worker started"]


def test_tail_tells_retry_copies_by_their_attempt(real: Backend, tmp_path: Path) -> None:
    """A handler that fails once is retried from a copy of its entry: tail shows the original
    as attempt 1 and the copy as attempt 2 (for its concern), in text and JSON."""
    client = real.sync_client()
    url = real.url or ""
    put_many(client, [(Flaky(n=1, failures=1), "f1")])
    with BotProcess(url, tmp_path / "bot.log", "--retry-base", "0.05") as bot:
        wait_until(lambda: client.xlen(EVENTS) >= 1, "the retried operation", 30, bot)
    printed = bots_cli("tail", f"{SUBSYSTEM}/client-ops", "--json", "--url", url).stdout
    rows = [json.loads(line) for line in printed.splitlines()]
    assert [(1, None), (2, "flaky")] == [(r["attempt"], r.get("for")) for r in rows]
    text = bots_cli("tail", f"{SUBSYSTEM}/client-ops", "--url", url).stdout.splitlines()
    assert ["attempt=2" in line for line in text] == [False, True]
    assert "for=flaky" in text[1]


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
