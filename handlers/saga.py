"""Sagas: wait for the outcomes of several operations, then end an aggregate exactly once.

A handler starts a saga with ``saga.start(ctx, ...)``: the operations it awaits (put in the
same commit, each under the message id ``<saga id>~<label>``), a deadline, and, as data in
the saga record, the event to write to the target aggregate for each ending: every awaited
operation succeeded, some failed, or the deadline passed first. The framework does the rest
with handlers ``app.saga(saga)`` registers:

* the saga entry (``<home>/sagas``) starts the saga aggregate (``SagaState``, id = the saga
  id, in the home subsystem);
* an outcome event (a declared type, appended by an awaited operation's handler: its
  causation id is the operation's message id) on ``<subsystem>/events`` records a success or
  a failure; so does a dead letter of an awaited operation on ``<subsystem>/dead``: an
  operation that goes Failed (every attempt failed, or ``Fail``) is a failed outcome, named
  with its reason, without waiting for the deadline;
* the deadline (``SagaDeadline``, parked in ``<home>/internal-ops`` until due) marks it
  timed out.

After each, the saga decides; once it can, it appends the ending's event to the target
aggregate and ``SagaEnded`` to itself in one commit, each at the version it was loaded at:
two handlers racing to end it cannot both commit (the loser reruns and finds it ended), and
anything arriving later changes nothing. Outcomes may arrive in any order, even before the
saga entry; they are kept and judged when it arrives.

An ending's event is given as ``Ending.of(EventType, field=value, ...)``; the fields the
saga knows only at the end are filled in when the event declares them: ``succeeded`` (the
labels that succeeded), ``failed`` (label -> error), ``missing`` (labels with no outcome by
the deadline) and ``at_ms``. An ending naming an unregistered type, or fields its event does
not have, is refused when it is declared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamcqrs.domain.aggregate import Aggregate
from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.domain.messages import Event, Message, Operation
from streamcqrs.domain.registry import TypeRegistry, message, registry
from streamcqrs.handlers.context import Context
from streamcqrs.handlers.errors import HandlerError
from streamcqrs.streams import now_ms, to_ms
from streamcqrs.streams.deadletter import DeadLetter

if TYPE_CHECKING:
    from streamcqrs.handlers.registry import App

MARK = "~"
"""Between a saga id and a label in an awaited operation's message id."""
COMPUTED = {"succeeded": (), "failed": {}, "missing": (), "at_ms": 0}
"""The fields of an ending's event a saga fills in when it ends (placeholders to validate)."""
Result = Literal["succeeded", "failed", "timed-out"]


class Ending(BaseModel):
    """The event a saga writes to its target for one way of ending: a type name and fields."""

    model_config = ConfigDict(frozen=True)

    name: str
    """The event's registered type name."""
    data: dict[str, Any] = Field(default_factory=dict)
    fill: dict[str, str] = Field(default_factory=dict)
    """Event field -> the computed value it takes, where the names differ (by default a field
    named like one of ``COMPUTED`` takes it)."""

    @classmethod
    def of(
        cls,
        event: type[Event],
        /,
        *,
        fill: Mapping[str, str] | None = None,
        types: TypeRegistry = registry,
        **data: Any,
    ) -> Ending:
        """The ending writing ``event`` with ``data`` and what the saga fills in (``fill``
        renames: ``{"channels": "succeeded"}``); refused now if the type is not registered or
        the fields do not fit it."""
        kind = types.of_class(event)  # RegistryError if not registered
        unknown = set((fill or {}).values()) - set(COMPUTED)
        if unknown:
            raise ConfigurationError(
                f"saga ending {kind.name!r} fills {sorted(unknown)}; a saga fills only "
                f"{sorted(COMPUTED)}"
            )
        ending = cls(name=kind.name, data=data, fill=dict(fill or {}))
        ending.check(types)
        return ending

    def _computed(self, cls: type[Message], values: Mapping[str, Any]) -> dict[str, Any]:
        """Event field -> computed value, for the fields the event has and data leaves open."""
        sources = {name: name for name in COMPUTED} | self.fill
        return {
            field: values[source]
            for field, source in sources.items()
            if field in cls.model_fields and field not in self.data and source in values
        }

    def check(self, types: TypeRegistry = registry) -> None:
        """Refuse an ending whose type is unknown or whose fields its event does not take."""
        cls = types.of_name(self.name).cls
        try:
            cls.model_validate({**self._computed(cls, COMPUTED), **self.data})
        except ValidationError as exc:
            raise ConfigurationError(
                f"saga ending {self.name!r} does not fit its event: {exc.errors()!r}"
            ) from None

    def event(self, fill: Mapping[str, Any], types: TypeRegistry = registry) -> Event:
        """The event, with the saga's computed fields where the event declares them."""
        cls = types.of_name(self.name).cls
        made = cls.model_validate({**self._computed(cls, fill), **self.data})
        if not isinstance(made, Event):
            raise ConfigurationError(f"saga ending {self.name!r} is not an Event")
        return made


class Outcome(BaseModel):
    """What one awaited operation reported."""

    model_config = ConfigDict(frozen=True)

    label: str
    succeeded: bool
    error: str = ""
    at_ms: int = 0


@message("streamcqrs.saga.Entry")
class SagaEntry(Operation):
    """The saga record: what it awaits, until when, and what to write for each ending."""

    saga: str
    saga_id: str
    target_id: str
    awaited: dict[str, str]
    """Awaited operation message id -> its label."""
    deadline_ms: int
    on_success: Ending
    on_failure: Ending
    on_timeout: Ending
    tags: tuple[tuple[str, str], ...] = ()


@message("streamcqrs.saga.Deadline")
class SagaDeadline(Operation):
    """Parked until a saga's deadline: then it times out, unless it ended."""

    saga: str
    saga_id: str


@message("streamcqrs.saga.Started")
class SagaStarted(Event):
    """The saga entry arrived: the saga now knows what it awaits."""

    saga: str
    target_id: str
    awaited: dict[str, str]
    deadline_ms: int
    on_success: Ending
    on_failure: Ending
    on_timeout: Ending
    tags: tuple[tuple[str, str], ...] = ()


@message("streamcqrs.saga.OutcomeRecorded")
class SagaOutcome(Event):
    """An awaited operation's outcome."""

    saga: str
    target_id: str
    operation_id: str
    label: str
    succeeded: bool
    error: str = ""
    at_ms: int


@message("streamcqrs.saga.TimedOut")
class SagaTimedOut(Event):
    """The deadline passed before the saga could end."""

    saga: str
    target_id: str
    at_ms: int


@message("streamcqrs.saga.Ended")
class SagaEnded(Event):
    """The saga wrote its ending to the target; nothing changes it any more."""

    saga: str
    target_id: str
    result: Result
    at_ms: int


class SagaState(Aggregate):
    """A saga: what it awaits, what has arrived, whether the deadline passed, how it ended."""

    saga: str = ""
    target_id: str = ""
    started: bool = False
    awaited: dict[str, str] = Field(default_factory=dict)
    deadline_ms: int = 0
    endings: dict[str, Ending] = Field(default_factory=dict)
    tags: tuple[tuple[str, str], ...] = ()
    outcomes: dict[str, Outcome] = Field(default_factory=dict)
    """Operation message id -> its outcome (may hold outcomes from before the start)."""
    timed_out: bool = False
    ended: bool = False
    result: str = ""

    def apply(self, event: Event) -> None:
        """Fold one saga event."""
        match event:
            case SagaStarted():
                self.saga, self.target_id, self.started = event.saga, event.target_id, True
                self.awaited, self.deadline_ms = dict(event.awaited), event.deadline_ms
                self.endings = {"succeeded": event.on_success, "failed": event.on_failure,
                                "timed-out": event.on_timeout}  # fmt: skip
                self.tags = event.tags
            case SagaOutcome():
                self.saga, self.target_id = event.saga, event.target_id
                self.outcomes[event.operation_id] = Outcome(
                    label=event.label, succeeded=event.succeeded, error=event.error,
                    at_ms=event.at_ms,
                )  # fmt: skip
            case SagaTimedOut():
                self.timed_out = True
            case SagaEnded():
                self.ended, self.result = True, event.result
            case _:
                raise TypeError(f"SagaState cannot apply {type(event).__name__}")

    def awaits(self, operation_id: str) -> bool:
        """True if an outcome of ``operation_id`` would still change this saga."""
        if self.ended or operation_id in self.outcomes:
            return False  # ended, or a duplicate of an outcome already recorded
        return not self.started or operation_id in self.awaited

    def decide(self) -> tuple[Result, dict[str, Any]] | None:
        """How the saga ends now, with the fields it fills in; None while it must wait."""
        if self.ended or not self.started:
            return None
        arrived = {op: self.outcomes[op] for op in self.awaited if op in self.outcomes}
        fill: dict[str, Any] = {
            "succeeded": tuple(sorted(o.label for o in arrived.values() if o.succeeded)),
            "failed": {o.label: o.error for o in arrived.values() if not o.succeeded},
            "at_ms": now_ms(),
        }
        if len(arrived) == len(self.awaited):
            return ("failed" if fill["failed"] else "succeeded"), fill
        if self.timed_out:
            missing = (label for op, label in self.awaited.items() if op not in arrived)
            return "timed-out", {**fill, "missing": tuple(sorted(missing))}
        return None


def operation_id(saga_id: str, label: str) -> str:
    """The message id of a saga's awaited operation: how its outcomes find the saga."""
    if MARK in label or not label:
        raise ConfigurationError(f"a saga label must be non-empty without {MARK!r}: {label!r}")
    return f"{saga_id}{MARK}{label}"


def saga_of(operation: str) -> str:
    """The saga id an awaited operation's message id names ('' if it names none)."""
    saga_id, mark, _label = operation.rpartition(MARK)
    return saga_id if mark else ""


@dataclass(frozen=True, slots=True)
class Awaited:
    """One operation a saga awaits: where to put it, and how."""

    stream: str
    operation: Operation
    object_id: str | int | None = None
    tags: Iterable[tuple[str, str]] | Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Saga:
    """A kind of saga an app runs: where it lives, what it ends, where outcomes arrive.

    ``name`` is the concern of its handlers; ``home`` the subsystem holding saga
    aggregates, entries (``<home>/sagas``) and deadlines (``<home>/internal-ops``);
    ``target`` the aggregate class an ending is appended to, in ``target_subsystem``
    (default: home); ``outcomes`` maps the event types that report an awaited operation's
    outcome to whether they mean success; ``reports`` names the subsystems whose events (and
    dead letters) report them.
    """

    name: str
    home: str
    target: type[Aggregate]
    outcomes: Mapping[type[Event], bool]
    reports: Sequence[str]
    target_subsystem: str = ""

    @property
    def target_home(self) -> str:
        """The subsystem of the target aggregates."""
        return self.target_subsystem or self.home

    def register(self, app: App) -> None:
        """Add the saga's handlers to ``app`` (``app.saga(saga)`` calls this)."""
        for cls in self.outcomes:
            app.types.of_class(cls)  # registered, or a clear error now
        appends = sorted({self.home, self.target_home})
        named = f"saga {self.name}"
        app.handler(SagaEntry, stream=f"{self.home}/sagas", concern=self.name,
                    appends=appends, name=f"{named}: start")(self._start)  # fmt: skip
        app.handler(SagaDeadline, stream=f"{self.home}/internal-ops", concern=self.name,
                    appends=appends, name=f"{named}: deadline")(self._deadline)  # fmt: skip
        for subsystem in self.reports:
            app.handler(*self.outcomes, stream=f"{subsystem}/events", concern=self.name,
                        appends=appends, name=f"saga {self.name}: outcomes of {subsystem}",
                        )(self._outcome)  # fmt: skip
            app.handler(DeadLetter, stream=f"{subsystem}/dead", concern=self.name,
                        appends=appends, name=f"saga {self.name}: failures of {subsystem}",
                        )(self._failure)  # fmt: skip

    def start(
        self,
        ctx: Context,
        *,
        saga_id: str,
        target_id: str,
        awaited: Mapping[str, Awaited],
        deadline: datetime | timedelta | float | int,
        on_success: Ending,
        on_failure: Ending,
        on_timeout: Ending,
        tags: Iterable[tuple[str, str]] = (),
    ) -> dict[str, str]:
        """Start a saga from a handler: put the awaited operations (label -> ``Awaited``),
        the saga entry and its deadline, all in the handler's commit; label -> message id.

        ``deadline``: a datetime, epoch ms (int), or a timedelta / seconds (float) from now.
        The handler declares writes to each awaited stream, ``<home>/sagas`` and
        ``<home>/internal-ops``.
        """
        for ending in (on_success, on_failure, on_timeout):
            ending.check(ctx.types)
        if not awaited:
            raise HandlerError(f"saga {self.name!r} must await at least one operation")
        if isinstance(deadline, timedelta):
            due = now_ms() + int(deadline.total_seconds() * 1000)
        elif isinstance(deadline, float):
            due = now_ms() + int(deadline * 1000)
        else:
            due = to_ms(deadline, 0)
        ids: dict[str, str] = {}
        for label, what in awaited.items():
            ids[label] = ctx.put(
                what.stream, what.operation, object_id=what.object_id, tags=what.tags,
                message_id=operation_id(saga_id, label),
            )  # fmt: skip
        pairs = tuple((str(n), str(v)) for n, v in tags)
        entry = SagaEntry(
            saga=self.name, saga_id=saga_id, target_id=target_id,
            awaited={op: label for label, op in ids.items()}, deadline_ms=due,
            on_success=on_success, on_failure=on_failure, on_timeout=on_timeout, tags=pairs,
        )  # fmt: skip
        ctx.put(f"{self.home}/sagas", entry, object_id=saga_id)
        ctx.put(f"{self.home}/internal-ops", SagaDeadline(saga=self.name, saga_id=saga_id),
                object_id=saga_id, execute_earliest=due)  # fmt: skip
        return ids

    # -- the framework's handlers ------------------------------------------------------------

    async def _load(self, ctx: Context, saga_id: str) -> SagaState:
        return await ctx.load(SagaState, saga_id, subsystem=self.home)

    async def _start(self, entry: SagaEntry, ctx: Context) -> None:
        """The saga entry: begin waiting for exactly the operations it names."""
        saga = await self._load(ctx, entry.saga_id)
        if saga.started:
            return  # the entry was handled before
        started = SagaStarted(
            saga=entry.saga, target_id=entry.target_id, awaited=entry.awaited,
            deadline_ms=entry.deadline_ms, on_success=entry.on_success,
            on_failure=entry.on_failure, on_timeout=entry.on_timeout, tags=entry.tags,
        )  # fmt: skip
        ctx.append(saga, started, tags=entry.tags)
        await self._settle(ctx, saga)  # outcomes or the deadline may have come first

    async def _outcome(self, event: Event, ctx: Context) -> None:
        """An outcome event: record it for the saga whose operation caused it."""
        op = ctx.envelope.causation_id
        succeeded = self.outcomes[type(event)]
        error = "" if succeeded else str(getattr(event, "error", "") or type(event).__name__)
        at = int(getattr(event, "at_ms", 0) or ctx.envelope.created_at)
        await self._record(ctx, op, succeeded, error, at)

    async def _failure(self, letter: DeadLetter, ctx: Context) -> None:
        """A dead letter: an awaited operation that went Failed is a failed outcome."""
        await self._record(ctx, letter.message_id, False, letter.reason, letter.at)

    async def _record(
        self, ctx: Context, op: str, succeeded: bool, error: str, at_ms: int
    ) -> None:
        saga_id = saga_of(op)
        if not saga_id:
            return  # caused by an operation no saga awaits
        saga = await self._load(ctx, saga_id)
        if not saga.awaits(op):
            ctx.log.info("outcome changes nothing", operation_id=op, ended=saga.ended)
            return
        label = op.rpartition(MARK)[2]
        outcome = SagaOutcome(
            saga=self.name, target_id=saga.target_id, operation_id=op, label=label,
            succeeded=succeeded, error=error, at_ms=at_ms,
        )  # fmt: skip
        ctx.append(saga, outcome, tags=saga.tags)
        await self._settle(ctx, saga)

    async def _deadline(self, due: SagaDeadline, ctx: Context) -> None:
        """The deadline passed: a saga still open ends timed out."""
        if due.saga != self.name:
            return  # another saga's deadline in the same stream
        saga = await self._load(ctx, due.saga_id)
        if saga.ended or saga.timed_out:
            return
        passed = SagaTimedOut(saga=self.name, target_id=saga.target_id, at_ms=now_ms())
        ctx.append(saga, passed, tags=saga.tags)
        await self._settle(ctx, saga)

    async def _settle(self, ctx: Context, saga: SagaState) -> None:
        """If the saga can end now, write its ending to the target and end it."""
        decided = saga.decide()
        if decided is None:
            return
        result, fill = decided
        ending = saga.endings[result].event(fill, ctx.types)
        target = await ctx.load(self.target, saga.target_id, subsystem=self.target_home)
        ctx.append(target, ending, tags=saga.tags)
        ended = SagaEnded(saga=self.name, target_id=saga.target_id, result=result,
                          at_ms=fill["at_ms"])  # fmt: skip
        ctx.append(saga, ended, tags=saga.tags)
        ctx.log.info("saga ended", saga=self.name, saga_id=saga.id, result=result)


__all__ = [
    "Awaited",
    "Ending",
    "Outcome",
    "Saga",
    "SagaDeadline",
    "SagaEnded",
    "SagaEntry",
    "SagaOutcome",
    "SagaStarted",
    "SagaState",
    "SagaTimedOut",
    "operation_id",
    "saga_of",
]
