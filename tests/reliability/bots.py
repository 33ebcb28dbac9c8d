"""Bot processes a reliability test can SIGKILL and restart, and the checks it runs after.

Each bot is ``streamcqrs run`` in its own session, so a kill takes the supervisor and
its worker down together, the way a machine or container dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parents[2]


class BotProcess:
    """One ``streamcqrs run APP`` process group, started, killed and restarted at will."""

    def __init__(self, app: str, url: str, *args: str, log: Path | None = None) -> None:
        self.command = [
            sys.executable, "-m", "streamcqrs", "run", app, "--url", url,
            "--log-level", "warning",
            *args,
        ]  # fmt: skip
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> BotProcess:
        """Start the bot (a no-op while it runs)."""
        if self.process is None or self.process.poll() is not None:
            out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        return self

    def kill(self) -> None:
        """SIGKILL the bot's whole process group: supervisor and worker die at once."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.kills += 1

    def workers(self) -> list[int]:
        """Pids of the bot's worker processes (spawned children, not the resource tracker)."""
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            children = psutil.Process(self.process.pid).children()
            return sorted(c.pid for c in children if any("spawn_main" in a for a in c.cmdline()))
        except psutil.Error:  # a child exited while we looked
            return []

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the supervisor has started its worker (its signal handlers are set)."""
        wait_until(lambda: bool(self.workers()), "the bot's worker process", timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the bot and wait; kill it if it outlives ``timeout``. Returns its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


def stop_all(bots: Sequence[BotProcess]) -> list[int | None]:
    """Stop every bot (used in ``finally``), returning their exit codes."""
    return [bot.stop() for bot in bots]


def wait_until(
    check: Callable[[], bool],
    what: str,
    timeout: float,
    diagnose: Callable[[], str] | None = None,
) -> None:
    """Poll ``check`` every 50 ms until it holds; fail naming ``what`` after ``timeout``.

    ``diagnose`` adds what to look at (the bots' log) to the failure message.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    extra = f"\n{diagnose()}" if diagnose else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")


def objects_in(client: redis.Redis, stream: str, type_name: bytes) -> Counter[bytes]:
    """How many entries of ``type_name`` the stream holds per object id."""
    seen: Counter[bytes] = Counter()
    last = "-"
    while True:
        chunk = client.xrange(stream, min=last, count=5000)
        if last != "-":
            chunk = chunk[1:]
        if not chunk:
            return seen
        for _entry_id, fields in chunk:
            if fields.get(b"type") == type_name:
                seen[fields.get(b"obj", b"")] += 1
        last = chunk[-1][0].decode()


def holding_work(
    client: redis.Redis, stream: str, bots: Sequence[BotProcess]
) -> list[BotProcess]:
    """The bots whose worker holds entries of ``stream`` right now (read, not yet acked).

    A consumer's name holds its worker's pid (``BotConfig.consumer_name``); the consumers of
    killed bots keep their entries until others take them over, and match no live bot.
    """
    busy: set[str] = set()
    for group in client.xinfo_groups(stream):
        for consumer in client.xinfo_consumers(stream, group["name"]):
            if int(consumer["pending"]):
                name = consumer["name"]
                busy.add(name.decode() if isinstance(name, bytes) else str(name))
    return [bot for bot in bots
            if any(f"-{pid}-" in name for pid in bot.workers() for name in busy)]  # fmt: skip


def pending(client: redis.Redis, stream: str) -> int:
    """Entries still pending over every consumer group of ``stream``."""
    total = 0
    for group in client.xinfo_groups(stream):
        total += int(group["pending"])
    return total
