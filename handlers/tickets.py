"""Tickets: deferred work on an aggregate, as data, with a receipt (MDriven's SysAsyncTicket).

A ticket names a root (an aggregate type and id) and the work to do on it: an operation (its
handler runs with the root's id as ``ctx.object_id``) or an aggregate method registered as
``"Type.method"`` (``@app.method``). ``Tickets(subsystem).submit(...)`` from anywhere, or
``ctx.submit(...)`` inside a handler (then it is part of that handler's atomic commit), writes
the ticket and its receipt in one commit and returns the ticket id; with
``execute_earliest`` the ticket waits in the delayed set until due.

The executor (``app.tickets("customers")``, concern ``tickets`` on ``customers/internal-ops``)
runs a due ticket in this order, so nothing runs on a bad ticket:

1. the work must be known (a registered method, or an operation some handler takes) and
   the root type registered (``app.root`` or ``@app.method``): else the receipt's error
   says which and nothing runs;
2. with exclusive work, the lease is taken (``handlers.exclusive``);
3. the root must exist (an aggregate with at least one event): else an error, no run;
4. a precondition declared for the work (``app.precondition``, ``@app.method(precondition=)``)
   is evaluated on the loaded root: false, and the receipt says so and nothing runs;
5. the work runs; its outputs, the receipt (done, no error, deleted after ``keep_receipt``)
   and the ack of the ticket are one commit.

A receipt is one small hash that the server itself deletes ``keep_receipt`` after the ticket
was done (PEXPIREAT): ``receipt(id)`` is None from then on. Work that raises is retried like
any handler; the receipt of a ticket that failed for good reads its error from the ticket's
handling status and stays, like the Failed record, until an operator acts.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from streamcqrs.domain.aggregate import Aggregate
from streamcqrs.domain.messages import Message, Operation
from streamcqrs.domain.registry import TypeRegistry, message, registry
from streamcqrs.handlers.context import Context, IntentOutput, Output, PutOutput
from streamcqrs.handlers.errors import HandlerError
from streamcqrs.handlers.exclusive import Exclusive, held
from streamcqrs.handlers.registry import StreamRef
from streamcqrs.streams import now_ms, to_ms
from streamcqrs.streams.aggregates import AggregateStore
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.envelope import as_str, encode
from streamcqrs.streams.handling import HandlingStore
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.statuses import Status
from streamcqrs.streams.subsystem import Subsystem

if TYPE_CHECKING:
    from streamcqrs.handlers.deferred import Deferred
    from streamcqrs.handlers.registry import App, HandlerSpec

CONCERN = "tickets"
"""The concern (consumer group) of the ticket executor."""
KIND = Kind.INTERNAL_OPERATIONS
"""The stream kind tickets go to: a subsystem's own deferred work."""
KEEP_RECEIPT = timedelta(minutes=10)
"""How long a receipt stays after its ticket was done, unless the submitter says."""

Root = tuple[type[Aggregate] | str, str | int]
"""A ticket's root: (aggregate class or its registered name, aggregate id)."""
Precondition = Callable[[Any], bool]
"""A check on the loaded root; the work runs only if it returns True."""


@message("streamcqrs.Ticket")
class Ticket(Operation):
    """Work to do on an aggregate later: what the executor reads (the ticket id is its id)."""

    root_type: str
    root_id: str
    work: str
    """``"Type.method"``, or the registered type name of ``operation``."""
    operation: dict[str, Any] | None = None
    """The operation's payload (JSON-shaped), when the work is an operation."""
    operation_schema: int = 0
    keep_receipt_ms: int = int(KEEP_RECEIPT.total_seconds() * 1000)


def root_name(root: type[Aggregate] | str) -> str:
    """The name a root type goes by in tickets: its class name unless given as text."""
    return root if isinstance(root, str) else root.__name__


@dataclass(frozen=True, slots=True)
class Method:
    """An aggregate method registered as ticket work: ``"Customer.assign_number"``."""

    name: str
    root: type[Aggregate]
    fn: Callable[[Any, Context], Awaitable[None] | None]
    spec: HandlerSpec
    """What the method may touch (its ``appends``, ``writes``, ``reads``), as a handler's."""
    exclusive: Exclusive | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where a ticket stands: when it was done, with what error, and when its receipt goes."""

    ticket_id: str
    root_type: str
    root_id: str
    work: str
    submitted_at: datetime
    execute_earliest: datetime | None = None
    done_at: datetime | None = None
    error: str = ""
    """Why the work did not run (unknown root or work, a false precondition), or why it
    failed for good; empty when it ran."""
    delete_at: datetime | None = None
    """When the server deletes this receipt (``done_at`` + the ticket's ``keep_receipt``)."""
    failed: bool = False
    """The work raised on every attempt: the ticket's record is Failed (see ``error``)."""

    @property
    def done(self) -> bool:
        """The ticket was handled: its work ran, or it was refused up front."""
        return self.done_at is not None


def _ms(value: timedelta | float | None, default: timedelta) -> int:
    if value is None:
        value = default
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise HandlerError(f"keep_receipt must not be negative, got {seconds} s")
    return int(seconds * 1000)


def _when(ms: str | None) -> datetime | None:
    return None if not ms or ms == "0" else datetime.fromtimestamp(int(ms) / 1000, UTC)


def ticket_outputs(
    keys: SubsystemKeys,
    root: Root,
    work: Message | str,
    *,
    execute_earliest: datetime | int | None = None,
    delay: timedelta | float | None = None,
    keep_receipt: timedelta | float | None = None,
    types: TypeRegistry = registry,
    message_id: str | None = None,
    correlation_id: str = "",
    causation_id: str = "",
) -> tuple[str, list[Output]]:
    """The ticket id and the outputs that submit it: the ticket put and its first receipt."""
    root_type, root_id = root
    if isinstance(work, str):
        if "." not in work:
            raise HandlerError(f"work {work!r} must be an operation or 'Type.method'")
        ticket = Ticket(root_type=root_name(root_type), root_id=str(root_id), work=work,
                        keep_receipt_ms=_ms(keep_receipt, KEEP_RECEIPT))  # fmt: skip
    else:
        kind = types.of_class(type(work))
        payload = work.__pydantic_serializer__.to_python(work, mode="json")
        ticket = Ticket(root_type=root_name(root_type), root_id=str(root_id), work=kind.name,
                        operation=payload, operation_schema=kind.version,
                        keep_receipt_ms=_ms(keep_receipt, KEEP_RECEIPT))  # fmt: skip
    if Ticket not in types:
        types.register(Ticket, "streamcqrs.Ticket")
    envelope = encode(ticket, types=types, message_id=message_id, correlation_id=correlation_id,
                      causation_id=causation_id)  # fmt: skip
    ticket_id = envelope.message_id
    envelope = dataclasses.replace(envelope, object_id=ticket_id)
    due: int | None = None
    if execute_earliest is not None:
        due = to_ms(execute_earliest, 0)
    elif delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        due = now_ms() + int(seconds * 1000)
    fields: dict[str, str | int] = {
        "root": f"{ticket.root_type}/{ticket.root_id}", "work": ticket.work,
        "submitted": now_ms(), "due": due or 0, "keep": ticket.keep_receipt_ms,
    }  # fmt: skip
    receipt_key = keys.for_object(ticket_id).receipt(ticket_id)
    put = PutOutput(StreamRef(keys.subsystem, KIND), keys, envelope, due_ms=due)
    return ticket_id, [put, IntentOutput(lambda commit: commit.receipt(receipt_key, fields))]


class Tickets:
    """Submit tickets to a subsystem and read their receipts, from outside any handler.

    >>> tickets = Tickets(Subsystem("customers", client))
    >>> ticket = await tickets.submit(root=(Customer, "c-7"), work="Customer.assign_number")
    >>> (await tickets.receipt(ticket)).done_at
    """

    def __init__(self, subsystem: Subsystem) -> None:
        self.subsystem = subsystem

    async def submit(
        self,
        root: Root,
        work: Message | str,
        *,
        execute_earliest: datetime | int | None = None,
        delay: timedelta | float | None = None,
        keep_receipt: timedelta | float | None = None,
    ) -> str:
        """Submit ``work`` on ``root`` (now, or when due); the ticket id, for ``receipt``."""
        ticket_id, outputs = ticket_outputs(
            self.subsystem.keys, root, work, execute_earliest=execute_earliest, delay=delay,
            keep_receipt=keep_receipt, types=self.subsystem.types,
        )  # fmt: skip
        commit = Commit()
        for output in outputs:
            output.fill(commit)
        await commit.run(self.subsystem.client)
        return ticket_id

    async def receipt(self, ticket_id: str) -> Receipt | None:
        """The ticket's receipt; None for an unknown ticket or once the receipt was deleted."""
        keys = self.subsystem.keys
        raw = await self.subsystem.client.hgetall(keys.for_object(ticket_id).receipt(ticket_id))
        if not raw:
            return None
        fields = {as_str(k): as_str(v) for k, v in raw.items()}
        root_type, _, root_id = fields.get("root", "/").partition("/")
        error, failed = fields.get("error", ""), False
        if "done" not in fields:
            store = HandlingStore(self.subsystem.client, keys, KIND, CONCERN)
            if await store.status(ticket_id) is Status.FAILED:
                history = await store.history(ticket_id)
                failed = True
                error = history[-1].details if history else "the ticket's work failed"
        return Receipt(
            ticket_id=ticket_id, root_type=root_type, root_id=root_id,
            work=fields.get("work", ""),
            submitted_at=cast(datetime, _when(fields.get("submitted")) or _when("1")),
            execute_earliest=_when(fields.get("due")), done_at=_when(fields.get("done")),
            error=error, delete_at=_when(fields.get("delete")), failed=failed,
        )  # fmt: skip


def work_of(app: App, name: str) -> Method | HandlerSpec | None:
    """The ticket work ``name`` names: a registered method, or an operation's handler."""
    found = app.deferred.methods.get(name)
    if found is not None:
        return found
    try:
        cls = app.types.of_name(name).cls
    except Exception:  # UnknownMessageType: unknown work, said on the receipt
        return None
    for spec in app.handlers:
        if cls in spec.message_types and spec.concern != CONCERN:
            return spec
    return None


def executor(app: App, subsystem: str) -> Callable[[Ticket, Context], Awaitable[None]]:
    """The handler that runs ``subsystem``'s due tickets (see the module docstring)."""
    deferred = app.deferred

    async def execute_ticket(ticket: Ticket, ctx: Context) -> None:
        keys = ctx.keys(subsystem)
        receipt_key = keys.for_object(ctx.message_id).receipt(ctx.message_id)

        def finish(error: str = "") -> None:
            done = now_ms()
            delete = done + ticket.keep_receipt_ms
            fields: dict[str, str | int] = {"done": done, "error": error, "delete": delete}
            ctx.outputs.append(
                IntentOutput(lambda c: c.receipt(receipt_key, fields, delete_at_ms=delete))
            )
            if error:
                ctx.log.info("ticket not run", ticket=ctx.message_id, reason=error)

        work = work_of(app, ticket.work)
        cls = deferred.roots.get(ticket.root_type)
        if work is None:
            finish(f"unknown work {ticket.work!r}: register an aggregate method with "
                   "@app.method(...) or a handler for that operation")  # fmt: skip
            return
        if cls is None:
            finish(f"unknown root type {ticket.root_type!r}: register it with app.root(...) "
                   "or @app.method(...)")  # fmt: skip
            return
        spec = work.spec if isinstance(work, Method) else work
        exclusive = work.exclusive if isinstance(work, Method) else None
        inner = Context(
            spec, dataclasses.replace(ctx.envelope, object_id=ticket.root_id),
            entry_id=ctx.entry_id, attempt=ctx.attempt, client=ctx.client,
            keys_of=_keys_of(ctx), types=ctx.types, logger=ctx.log, resources=ctx.resources,
            trace=ctx.trace,
        )  # fmt: skip
        inner._count = 1_000  # its output ids differ from the outer context's
        if exclusive is None:
            ran = await _run(deferred, ticket, cls, work, inner, keys, subsystem)
        else:
            async with held(ctx, exclusive, subsystem):
                ran = await _run(deferred, ticket, cls, work, inner, keys, subsystem)
        if ran:
            ctx.outputs.extend(inner.outputs)
        finish(ran if isinstance(ran, str) else "")

    return execute_ticket


def _keys_of(ctx: Context) -> Mapping[str, SubsystemKeys]:
    return ctx._keys_of


async def _run(  # noqa: PLR0917 - internal, the executor's one step
    deferred: Deferred,
    ticket: Ticket,
    cls: type[Aggregate],
    work: Method | HandlerSpec,
    ctx: Context,
    keys: SubsystemKeys,
    subsystem: str,
) -> bool | str:
    """Load the root, check the precondition, run the work: True if it ran, else why not."""
    if isinstance(work, Method):
        root = await ctx.load(cls, ticket.root_id, subsystem=subsystem)
    else:
        root = await AggregateStore(keys, cls, ctx.client, types=ctx.types).load(ticket.root_id)
    if root.version == 0:
        return f"root {ticket.root_type} {ticket.root_id!r} not found in {subsystem}"
    check = deferred.preconditions.get(ticket.work)
    if check is not None and not check(root):
        name = getattr(check, "__name__", "precondition")
        return (f"precondition {name} of {ticket.work} is false for {ticket.root_type} "
                f"{ticket.root_id!r}; nothing ran")  # fmt: skip
    if isinstance(work, Method):
        fn, arg, spec = work.fn, cast(Any, root), work.spec
    else:
        fn, arg, spec = work.fn, _operation(ticket, ctx.types), work
    if spec.is_async:
        await cast(Awaitable[None], fn(arg, ctx))
    else:  # a plain def runs in a thread, as the bot runs it
        await asyncio.get_running_loop().run_in_executor(None, fn, arg, ctx)
    return True


def _operation(ticket: Ticket, types: TypeRegistry) -> Message:
    data = dict(ticket.operation or {})
    kind = types.of_name(ticket.work)
    if ticket.operation_schema and ticket.operation_schema != kind.version:
        data = types.upcast(ticket.work, ticket.operation_schema, data)
    return kind.cls.model_validate(data)


def spec_union(subsystem: str, specs: Sequence[HandlerSpec]) -> dict[str, Any]:
    """What the executor of ``subsystem`` may touch: everything its works declared."""
    writes = {w for s in specs for w in s.writes}
    appends = {subsystem, *(a for s in specs for a in s.appends)}
    reads = {r for s in specs for r in s.reads}
    return {"writes": frozenset(writes), "appends": frozenset(appends), "reads": frozenset(reads)}


__all__ = [
    "CONCERN",
    "KEEP_RECEIPT",
    "Method",
    "Precondition",
    "Receipt",
    "Root",
    "Ticket",
    "Tickets",
    "executor",
    "root_name",
    "spec_union",
    "ticket_outputs",
    "work_of",
]
