"""The app the observability tests run: ``streamcqrs run tests.observeapps:app``.

Subsystem ``observed``; its handlers read the client operations:

* ``Work(n, fail_first)``: waits until the gate key is set (so a test can see entries held
  pending and waiting in the stream), fails its first attempt if ``fail_first``, then puts a
  view of ``n`` naming the process and the resource it used.
* ``Hopeless(n)``: waits for the gate, then fails for good (``Fail``).
* ``Mended(n)``: fails until the key ``observed-test:mended`` exists (a fix deployed), then
  completes: a dead letter an operator retries after the fix.

Startup and shutdown hooks make one ``Tally`` per process and, when ``OBSERVE_HOOKS_LOG``
names a file, write a line there: ``start PID ID`` and ``stop PID ID USES``.
"""

from __future__ import annotations

import asyncio
import os

from streamcqrs.domain import Operation, message
from streamcqrs.handlers import App, Context, Fail, Resources

SUBSYSTEM = "observed"
OPS = f"{SUBSYSTEM}/client-ops"
VIEWS = f"{SUBSYSTEM}/views"
GATE = "observed-test:gate"
MENDED = "observed-test:mended"
HOOKS_LOG = "OBSERVE_HOOKS_LOG"


@message("observed.Work")
class Work(Operation):
    """Work held until the gate opens."""

    n: int
    fail_first: bool = False


@message("observed.Hopeless")
class Hopeless(Operation):
    """Work that fails for good once the gate opens."""

    n: int


@message("observed.Mended")
class Mended(Operation):
    """Work that fails until a fix is deployed (the key MENDED exists)."""

    n: int


class Tally:
    """A resource made once per process: counts the handler runs that used it."""

    def __init__(self) -> None:
        self.uses = 0


app = App("observed")


def _note(line: str) -> None:
    path = os.environ.get(HOOKS_LOG)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


@app.on_startup
async def open_tally(resources: Resources) -> None:
    """Make this process's Tally."""
    tally = resources["tally"] = Tally()
    _note(f"start {os.getpid()} {id(tally)}")


@app.on_shutdown
def close_tally(resources: Resources) -> None:
    """Say how often this process's Tally was used (a plain ``def`` hook)."""
    tally = resources["tally"]
    _note(f"stop {os.getpid()} {id(tally)} {tally.uses}")


async def _gate(ctx: Context) -> None:
    for _ in range(6000):  # at most 2 minutes: the test opens the gate long before
        if await ctx.client.exists(GATE):
            return
        await asyncio.sleep(0.02)


@app.handler(Work, stream=OPS, concern="work", writes=[VIEWS])
async def work(op: Work, ctx: Context) -> None:
    """Wait for the gate; fail the first attempt if asked; put a view of ``n``."""
    await _gate(ctx)
    if op.fail_first and ctx.attempt == 1:
        raise RuntimeError(f"work {op.n} fails its first attempt")
    tally: Tally = ctx.resources["tally"]
    tally.uses += 1
    ctx.put_view(VIEWS, op.n, {"n": op.n, "pid": os.getpid(), "tally": id(tally)})


@app.handler(Hopeless, stream=OPS, concern="work")
async def hopeless(op: Hopeless, ctx: Context) -> None:
    """Wait for the gate, then fail for good."""
    await _gate(ctx)
    raise Fail(f"hopeless {op.n}")


@app.handler(Mended, stream=OPS, concern="mended", writes=[VIEWS])
async def mended(op: Mended, ctx: Context) -> None:
    """Fail until the fix is deployed; then put a view saying so."""
    if not await ctx.client.exists(MENDED):
        raise RuntimeError(f"mended {op.n}: the fix is not deployed yet")
    ctx.put_view(VIEWS, f"mended-{op.n}", {"n": op.n, "status": "handled after the fix"})
