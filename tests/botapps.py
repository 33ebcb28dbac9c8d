"""The app the bot runtime tests run as real subprocesses: ``python -m bots run tests.botapps:app``.

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
"""

from __future__ import annotations

import asyncio
import time

from domain import Aggregate, Event, Operation, message
from handlers import App, Context

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


@message("botapp.Done")
class Done(Event):
    """The event each handled operation commits; ``at`` is when the handler ran (ms)."""

    n: int
    at: int = 0


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
