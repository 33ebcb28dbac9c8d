"""The apps the deferred-work tests run (in-process bots, or ``streamcqrs run`` processes).

``desk`` (tickets and exclusive access):

* ``Open(allow)`` on ``desk/client-ops``: opens account ``ctx.object_id`` (``Opened``); with
  ``submit_in`` > 0 it also submits a ticket ``Account.touch`` due that many ms later, in the
  same commit; with ``fail_after_submit`` it then raises (so nothing may be committed).
* ``Account.touch`` (a method, precondition ``account.allow``): appends ``Touched(at=now)``.
* ``Ping(note)`` on ``desk/internal-ops`` (concern ``ping``): appends ``Pinged`` to the
  aggregate ``ctx.object_id``; as ticket work it runs on the ticket's root.
* ``Count(n)`` on ``desk/client-ops`` (concern ``count``, exclusive ``desk-counter``): reads
  the counter aggregate, waits, appends the next value; records in-process how many run at
  once (``RUNNING``).

``clock`` (schedules): ``app.every(1 s, Tick)`` into ``clock/internal-ops``, which
``tick_app`` consumes (``Tick`` appends ``Ticked(due)`` to aggregate ``ticks``);
``quiet_app`` is the same app with the schedule removed.

``tidy`` (the cleaner): ``Job(n, fail)`` on ``tidy/client-ops``; a failing job raises
``Fail``, the others put ``Noted(n)`` tagged ``job=n`` into ``tidy/internal-ops`` (so each
job leaves index keys behind). Retention: done records kept 1 s, entries of both streams
1 s; the cleaner steps in batches of 200, with a pause from ``TIDY_CLEAN_PAUSE`` (so a test
can kill it mid-cycle).
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime

from pydantic import Field

from streamcqrs.domain import Aggregate, Event, Operation, message
from streamcqrs.handlers import App, Context, Fail
from streamcqrs.streams import now_ms

# -- desk: tickets and exclusive access ----------------------------------------------------


@message("desk.Open")
class Open(Operation):
    """Open an account; maybe submit a ticket in the same commit."""

    allow: bool = True
    submit_in: int = 0
    fail_after_submit: bool = False


@message("desk.Opened")
class Opened(Event):
    """The account exists."""

    allow: bool


@message("desk.Touched")
class Touched(Event):
    """The ``touch`` method ran at ``at`` (ms)."""

    at: int


@message("desk.Ping")
class Ping(Operation):
    """Operation work: appends ``Pinged`` to its object."""

    note: str


@message("desk.Pinged")
class Pinged(Event):
    """``Ping`` ran on this aggregate."""

    note: str


@message("desk.Count")
class Count(Operation):
    """Take the next counter value (exclusive)."""

    n: int
    pause: float = 0.005


@message("desk.Counted")
class Counted(Event):
    """The counter handed out ``value`` for ``n``."""

    n: int
    value: int


class Account(Aggregate):
    """An account: whether tickets may touch it, and when they did."""

    allow: bool = False
    touched: list[int] = Field(default_factory=list)
    pinged: list[str] = Field(default_factory=list)

    def apply(self, event: Event) -> None:
        """Fold one event."""
        match event:
            case Opened(allow=allow):
                self.allow = allow
            case Touched(at=at):
                self.touched = [*self.touched, at]
            case Pinged(note=note):
                self.pinged = [*self.pinged, note]


class Counter(Aggregate):
    """The exclusive counter."""

    value: int = 0

    def apply(self, event: Event) -> None:
        """Fold one event."""
        if isinstance(event, Counted):
            self.value = event.value


RUNNING = {"now": 0, "most": 0}
"""How many ``Count`` handlers of this process run at once, and the most seen."""

desk = App("desk")
desk.tickets("desk")
desk.root(Account)


@desk.handler(Open, stream="desk/client-ops", appends=["desk"], writes=["desk/internal-ops"])
async def open_account(op: Open, ctx: Context) -> None:
    """Open the account; submit a touch ticket in the same commit if asked."""
    account = await ctx.load(Account, ctx.object_id)
    ctx.append(account, Opened(allow=op.allow))
    if op.submit_in:
        ctx.submit(root=(Account, account.id), work="Account.touch", delay=op.submit_in / 1000)
    if op.fail_after_submit:
        raise Fail("asked to fail after submitting")


def allowed(account: Account) -> bool:
    """Tickets may touch an account opened with allow=True."""
    return account.allow


@desk.method(Account, subsystem="desk", precondition=allowed)
async def touch(account: Account, ctx: Context) -> None:
    """Record that the ticket ran, and when."""
    ctx.append(account, Touched(at=now_ms()))


@desk.handler(Ping, stream="desk/internal-ops", concern="ping", appends=["desk"])
async def ping(op: Ping, ctx: Context) -> None:
    """Append Pinged to the object the operation is about."""
    account = await ctx.load(Account, ctx.object_id)
    ctx.append(account, Pinged(note=op.note))


@desk.handler(Count, stream="desk/client-ops", concern="count", appends=["desk"],
              exclusive="desk-counter")  # fmt: skip
async def count(op: Count, ctx: Context) -> None:
    """Read the counter, wait a little (others must not run meanwhile), write the next."""
    RUNNING["now"] += 1
    RUNNING["most"] = max(RUNNING["most"], RUNNING["now"])
    try:
        counter = await ctx.load(Counter, "counter")
        await asyncio.sleep(op.pause)
        ctx.append(counter, Counted(n=op.n, value=counter.value + 1))
    finally:
        RUNNING["now"] -= 1


# -- clock: schedules ----------------------------------------------------------------------


@message("clock.Tick")
class Tick(Operation):
    """What the schedule puts: its due time (ms)."""

    due: int


@message("clock.Ticked")
class Ticked(Event):
    """A Tick was handled."""

    due: int


class Ticks(Aggregate):
    """Counts handled ticks."""

    def apply(self, event: Event) -> None:
        """Nothing to fold: the version counts."""


def make_tick(due: datetime) -> Tick:
    """The operation for one due time."""
    return Tick(due=int(due.timestamp() * 1000))


def _clock(name: str, scheduled: bool) -> App:
    app = App(name)
    if scheduled:
        app.every(1.0, make_tick, stream="clock/internal-ops", name="tick")

    @app.handler(Tick, stream="clock/internal-ops", appends=["clock"])
    async def on_tick(op: Tick, ctx: Context) -> None:
        ticks = await ctx.load(Ticks, "ticks")
        ctx.append(ticks, Ticked(due=op.due))

    return app


tick_app = _clock("clock", scheduled=True)
quiet_app = _clock("clock", scheduled=False)


# -- tidy: the cleaner ---------------------------------------------------------------------


@message("tidy.Job")
class Job(Operation):
    """One record to handle; ``fail`` makes its handler fail it for good."""

    n: int
    fail: bool = False


@message("tidy.Noted")
class Noted(Operation):
    """What a done job puts into ``tidy/internal-ops`` (tagged with its number)."""

    n: int


tidy = App("tidy")
tidy.retention("tidy/client-ops", keep_done_for=1.0, max_age=1.0)
tidy.retention("tidy/internal-ops", max_age=1.0)
tidy.cleaner(
    every=float(os.environ.get("TIDY_CLEAN_EVERY", "3600")),
    batch=200,
    pause=float(os.environ.get("TIDY_CLEAN_PAUSE", "0")),
    lease_ttl=2.0,
)


@tidy.handler(Job, stream="tidy/client-ops", writes=["tidy/internal-ops"])
async def do_job(op: Job, ctx: Context) -> None:
    """Fail the failing ones; note the others (tagged: an index key per job)."""
    if op.fail:
        raise Fail(f"job {op.n} was meant to fail")
    ctx.put("tidy/internal-ops", Noted(n=op.n), object_id=op.n, tags={"job": str(op.n)})
