"""The apps the reliability suite runs in bot processes it kills.

``chaos``: each operation commits two outputs, an event on a fresh aggregate (expected
version 0, so a second commit of the same operation would be refused as a conflict rather
than pass silently) and an internal operation keyed by the same number. After the chaos, each
number must have exactly one of each.
"""

from __future__ import annotations

import asyncio

from streamcqrs.domain import Aggregate, Event, Operation, message
from streamcqrs.handlers import App, Context


@message("chaos.Do")
class Do(Operation):
    """Work to do once, whatever happens to the bots."""

    n: int
    pad: str = ""


@message("chaos.Done")
class Done(Event):
    """The event an operation commits."""

    n: int


@message("chaos.Note")
class Note(Operation):
    """The internal operation an operation commits beside its event."""

    n: int


class Job(Aggregate):
    """One aggregate per operation; its version counts its events."""

    def apply(self, event: Event) -> None:
        """Nothing to fold: the version is the check."""


app = App("chaos")


@app.handler(
    Do,
    stream="chaos/client-ops",
    concern="do",
    appends=["chaos"],
    writes=["chaos/internal-ops"],
)
async def do(op: Do, ctx: Context) -> None:
    """Commit one event and one internal operation for ``op.n``, after 20 ms of "work".

    The pause keeps operations in flight, so a kill usually lands on work under way.
    """
    await asyncio.sleep(0.02)
    ctx.append(Job(id=f"job-{op.n}"), Done(n=op.n))
    ctx.put("chaos/internal-ops", Note(n=op.n), object_id=op.n)
