"""The app the bot runtime tests run as real subprocesses: ``streamcqrs run tests.botapps:app``.

Subsystem ``botapp``; every handler reads its client operations:

* ``Do(n)``: append ``Done(n)`` to a fresh aggregate ``job-n`` (expected version 0, so a second
  commit would be refused) and put ``Note(n)`` into the internal operations; waits ``pause``
  seconds first (to be caught mid-work by a kill or a SIGTERM).
* ``Flaky(n, failures)``: fails its first ``failures`` attempts, then appends ``Done(n)``.
  Each attempt's start time (epoch ms) is pushed to ``botapp-test:attempts:n`` by a side
  channel outside the commit, as an outside system would see the calls.
* ``Doomed(n)``: always fails.
* ``Later(n)``: appends ``Done(n)`` with the time it ran (for the delayed-operation test).
* ``Slow(n, seconds)``: a plain ``def`` handler (runs in a thread) that sleeps, then notes.
* ``Crash(n)``: kills the worker process running it, every time.
* ``Steered(n)``: raises NotYet on its first call, Retry(delay=0.2) on its second, then
  appends ``Done(n)`` with the attempt number it ran as (calls counted in
  ``botapp-test:calls:n``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import redis

from streamcqrs.domain import Aggregate, Event, ExecutionPolicy, Message, Operation, message
from streamcqrs.handlers import App, Context, Fail, NotYet, Retry
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.envelope import encode, entries, to_record
from streamcqrs.streams.keys import Kind, SubsystemKeys

SUBSYSTEM = "botapp"


@message("botapp.Do")
class Do(Operation):
    """Work to do exactly once."""

    n: int
    pause: float = 0.0


@message("botapp.Flaky")
class Flaky(Operation):
    """Work that fails ``failures`` times before it succeeds."""

    n: int
    failures: int


@message("botapp.Doomed")
class Doomed(Operation):
    """Work that always fails."""

    n: int


@message("botapp.Later")
class Later(Operation):
    """Work put with ``execute_earliest``."""

    n: int


@message("botapp.Slow")
class Slow(Operation):
    """Work done by a blocking (thread) handler."""

    n: int
    seconds: float = 0.0


@message("botapp.Crash")
class Crash(Operation):
    """Work whose handler kills its bot process (a segfault, an out-of-memory kill)."""

    n: int


@message("botapp.Steered")
class Steered(Operation):
    """Work whose handler first says "not yet", then asks for a retry, then succeeds."""

    n: int


@message("botapp.Rejected")
class Rejected(Operation):
    """Work its handler refuses with ``Fail``: no retry can help."""

    n: int


@message("botapp.Misdeclared")
class Misdeclared(Operation):
    """Work whose handler writes a stream it did not declare (a programming error)."""

    n: int


@message("botapp.Ignored")
class Ignored(Operation):
    """A type the app drops on its client operations without a handler."""

    n: int


@message("botapp.Governed")
class Governed(Operation):
    """Work that always fails, under a policy of two attempts (the bot's default is five)."""

    policy = ExecutionPolicy(max_attempts=2, retry_base=0.05)
    n: int


@message("botapp.Sleepy")
class Sleepy(Operation):
    """Work whose first attempt sleeps past the timeout its put gives it."""

    n: int


@message("botapp.Done")
class Done(Event):
    """The event each handled operation commits; ``at`` is when the handler ran (ms)."""

    n: int
    at: int = 0
    attempt: int = 0


@message("botapp.Note")
class Note(Operation):
    """The internal operation ``Do`` commits beside its event."""

    n: int


class Job(Aggregate):
    """One aggregate per operation; its version counts its events."""

    def apply(self, event: Event) -> None:
        """Nothing to fold: the version is the check."""


def attempts_key(n: int) -> str:
    """Where ``Flaky(n)`` pushes the start time of each attempt."""
    return f"botapp-test:attempts:{n}"


app = App("botapps")
OPS = f"{SUBSYSTEM}/client-ops"
NOTES = f"{SUBSYSTEM}/internal-ops"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@app.handler(Do, stream=OPS, concern="do", appends=[SUBSYSTEM], writes=[NOTES])
async def do(op: Do, ctx: Context) -> None:
    """Commit one event and one internal operation for ``op.n``."""
    if op.pause:
        await asyncio.sleep(op.pause)
    ctx.append(Job(id=f"job-{op.n}"), Done(n=op.n))
    ctx.put(NOTES, Note(n=op.n), object_id=op.n)


@app.handler(Flaky, stream=OPS, concern="flaky", appends=[SUBSYSTEM])
async def flaky(op: Flaky, ctx: Context) -> None:
    """Fail the first ``op.failures`` attempts."""
    await ctx.client.rpush(attempts_key(op.n), _now_ms())
    if ctx.attempt <= op.failures:
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    ctx.append(Job(id=f"flaky-{op.n}"), Done(n=op.n, at=_now_ms()))


@app.handler(Doomed, stream=OPS, concern="doomed")
async def doomed(op: Doomed, ctx: Context) -> None:
    """Always fail."""
    raise RuntimeError(f"doomed operation {op.n} fails every time")


@app.handler(Later, stream=OPS, concern="later", appends=[SUBSYSTEM])
async def later(op: Later, ctx: Context) -> None:
    """Record when the delayed operation ran."""
    ctx.append(Job(id=f"later-{op.n}"), Done(n=op.n, at=_now_ms()))


@app.handler(Slow, stream=OPS, concern="slow", writes=[NOTES])
def slow(op: Slow, ctx: Context) -> None:
    """Block a thread for ``op.seconds``, then put a note."""
    time.sleep(op.seconds)
    ctx.put(NOTES, Note(n=op.n), object_id=f"slow-{op.n}")


@app.handler(Crash, stream=OPS, concern="crash")
async def crash(op: Crash, ctx: Context) -> None:
    """Kill this worker process on the spot, as a segfault would."""
    os._exit(70)


@app.handler(Steered, stream=OPS, concern="steered", appends=[SUBSYSTEM])
async def steered(op: Steered, ctx: Context) -> None:
    """Not yet, then retry, then done: only the retry counts as an attempt."""
    calls = await ctx.client.incr(f"botapp-test:calls:{op.n}")
    if calls == 1:
        raise NotYet(delay=0.2, reason="waiting for something")
    if calls == 2:
        raise Retry(delay=0.2, reason="asked to retry")
    ctx.append(Job(id=f"steered-{op.n}"), Done(n=op.n, at=_now_ms(), attempt=ctx.attempt))


@app.handler(Rejected, stream=OPS, concern="strict")
async def rejected(op: Rejected, ctx: Context) -> None:
    """Fail at once: the record is Failed and dead-lettered on its first attempt."""
    raise Fail(f"customer {op.n} does not exist")


@app.handler(Misdeclared, stream=OPS, concern="strict")
async def misdeclared(op: Misdeclared, ctx: Context) -> None:
    """Write a stream not in ``writes=[...]``: a HandlerError, never retried."""
    ctx.put(f"{SUBSYSTEM}/sagas", Note(n=op.n))


app.ignore(Ignored, stream=OPS)


@app.handler(Governed, Sleepy, stream=OPS, concern="governed", appends=[SUBSYSTEM])
async def governed(op: Governed | Sleepy, ctx: Context) -> None:
    """Governed: always fail. Sleepy: sleep 5 s on the first attempt, then commit."""
    await ctx.client.rpush(attempts_key(op.n), _now_ms())
    if isinstance(op, Governed):
        raise RuntimeError(f"governed operation {op.n} fails every time")
    if ctx.attempt == 1:
        await asyncio.sleep(5)
    ctx.append(Job(id=f"sleepy-{op.n}"), Done(n=op.n, at=_now_ms(), attempt=ctx.attempt))


# -- running the app in real bot processes -------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
FAST = ("--block-ms", "100", "--mover-interval", "0.05", "--log-level", "debug")
"""Options that make a test bot notice work and stops quickly."""


class BotProcess:
    """``streamcqrs run tests.botapps:app`` as a real process group, logging to a file.

    Use as a context manager: whatever happens in the test, the group is killed at the end.
    """

    def __init__(
        self,
        url: str,
        log: Path,
        *args: str,
        app: str = "tests.botapps:app",
        env: dict[str, str] | None = None,
    ) -> None:
        self.log = log
        self._out = log.open("ab")
        command = [sys.executable, "-m", "streamcqrs", "run", app,
                   "--url", url, *FAST, *args]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")} | (env or {})
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 takes the workers too
        )  # fmt: skip

    def __enter__(self) -> BotProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def alive(self) -> bool:
        """True while the supervisor runs."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 the supervisor and its workers (a machine that dies)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM; wait up to ``timeout`` s; return (exit status, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(timeout)
        return status, time.monotonic() - started

    def text(self) -> str:
        """The log so far (for assertion messages)."""
        self._out.flush()
        return self.log.read_text(errors="replace")


def wait_until(
    check: Callable[[], bool], what: str, timeout: float, bot: BotProcess | None
) -> None:
    """Poll ``check`` every 20 ms until it holds; fail naming ``what`` (and the bot's log)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = bot.text()[-3000:] if bot else ""
            raise AssertionError(f"waited {timeout} s for {what}; bot log tail:\n{tail}")
        time.sleep(0.02)


def put_many(client: redis.Redis, messages: Iterable[tuple[Message, str]]) -> None:
    """Put (message, object id) pairs into botapp's client operations, 500 per script call."""
    keys = SubsystemKeys(SUBSYSTEM)
    items = list(messages)
    for start in range(0, len(items), 500):
        commit = Commit()
        for message_, object_id in items[start : start + 500]:
            commit.put(keys, Kind.CLIENT_OPERATIONS, encode(message_, object_id=object_id))
        commit.run_sync(client)


def ns_of(client: redis.Redis, key: str, field: str = "n") -> list[int]:
    """The ``n`` of every entry of stream ``key`` (decoded with the registry)."""
    out = []
    for entry_id, raw in entries(client.xrange(key)):
        record = to_record(key, entry_id, raw)
        out.append(getattr(record.message, field))
    return out
