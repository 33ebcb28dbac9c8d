"""The bot app the benchmarks run: one operation in, one event committed to its aggregate."""

from __future__ import annotations

from streamcqrs.domain import Aggregate, Event, Operation, message
from streamcqrs.handlers import App, Context


@message("bench.Work")
class Work(Operation):
    """An operation of ~100 bytes; ``t0`` is the producer's perf-counter time in ns."""

    t0: int
    data: str


@message("bench.Worked")
class Worked(Event):
    """The one event each operation commits."""

    t0: int
    data: str


class Job(Aggregate):
    """One aggregate per operation; it only counts its events."""

    def apply(self, event: Event) -> None:
        """Nothing to fold: the version counts the events."""


@message("bench.Counted")
class Counted(Event):
    """An event of the aggregate-load benchmark."""

    n: int


class Counter(Aggregate):
    """An aggregate with a running total, for the aggregate-load benchmark."""

    total: int = 0

    def apply(self, event: Event) -> None:
        """Add the event's number to the total."""
        if isinstance(event, Counted):
            self.total += event.n


app = App("bench")


@app.handler(Work, stream="bench/client-ops", concern="work", appends=["bench"])
async def work(op: Work, ctx: Context) -> None:
    """Commit one event to a fresh aggregate named by the operation's object id."""
    ctx.append(Job(id=ctx.object_id), Worked(t0=op.t0, data=op.data))


noop = App("bench-noop")


@noop.handler(Work, stream="bench/client-ops", concern="noop")
async def nothing(op: Work, ctx: Context) -> None:
    """Do nothing: the commit is the record's status and the ack."""
