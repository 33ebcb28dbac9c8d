"""An app's deferred work, declared: ticket work, schedules, retention, the cleaner.

``App`` takes these methods from ``Deferrable``; what they declare is kept in ``App.deferred``
(a ``Deferred``) and read by the ticket executor (``handlers.tickets``), the bots' timers
(``bots.timers``) and the cleaner (``bots.cleaner``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from streamcqrs.domain.aggregate import Aggregate
from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.domain.messages import Message
from streamcqrs.handlers.errors import HandlerError
from streamcqrs.handlers.exclusive import Exclusive, exclusive_handler
from streamcqrs.handlers.retention import CleanerSettings, Retention, seconds
from streamcqrs.handlers.schedules import MakeOperation, Misfire, Schedule
from streamcqrs.streams.keys import Kind

if TYPE_CHECKING:
    from streamcqrs.domain.registry import TypeRegistry
    from streamcqrs.handlers.registry import HandlerSpec, StreamRef
    from streamcqrs.handlers.tickets import Method, Precondition

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Deferred:
    """What an app declared about deferred work (filled by ``Deferrable``'s methods)."""

    methods: dict[str, Method] = field(default_factory=dict)
    """Aggregate methods tickets may name, by ``"Type.method"``."""
    preconditions: dict[str, Precondition] = field(default_factory=dict)
    """Checks on the root before ticket work runs, by work name."""
    roots: dict[str, type[Aggregate]] = field(default_factory=dict)
    """Aggregate types tickets may name as roots, by name."""
    tickets: set[str] = field(default_factory=set)
    """Subsystems whose tickets this app's bots execute."""
    schedules: dict[str, Schedule] = field(default_factory=dict)
    retention: dict[StreamRef, Retention] = field(default_factory=dict)
    cleaner: CleanerSettings = field(default_factory=CleanerSettings)


class Deferrable:
    """The deferred-work declarations of ``App`` (see ``handlers.deferred``)."""

    if TYPE_CHECKING:
        name: str
        types: TypeRegistry
        handlers: list[HandlerSpec]
        deferred: Deferred

    # -- tickets -----------------------------------------------------------------------------

    def root(self, cls: type[Aggregate], name: str | None = None) -> None:
        """Let tickets name aggregates of ``cls`` as their root (by ``name``, default the
        class name)."""
        known = self.deferred.roots.get(name or cls.__name__)
        if known is not None and known is not cls:
            raise HandlerError(f"root name {name or cls.__name__!r} is taken by {known!r}")
        self.deferred.roots[name or cls.__name__] = cls

    def method(
        self,
        root: type[Aggregate],
        name: str | None = None,
        *,
        subsystem: str | None = None,
        precondition: Precondition | None = None,
        exclusive: str | Exclusive | None = None,
        appends: Iterable[str] | None = None,
        writes: Iterable[str] = (),
        reads: Iterable[str] = (),
    ) -> Callable[[F], F]:
        """Register ``fn(root, ctx)`` as ticket work ``"Root.name"`` (default the function's).

        ``ctx`` is a handler's context limited to what the method declares: ``appends``
        (default: the ticket's subsystem), ``writes``, ``reads``. ``precondition(root)`` must
        hold for it to run; ``exclusive`` makes it take that key's lease first (before the
        root is loaded and the precondition checked). ``subsystem`` says whose tickets may run
        it (default: the app's name).
        """
        from streamcqrs.handlers.registry import HandlerSpec, StreamRef
        from streamcqrs.handlers.tickets import CONCERN, KIND, Method

        sub = subsystem or self.name

        def decorate(fn: F) -> F:
            work = f"{root.__name__}.{name or fn.__name__}"
            if work in self.deferred.methods:
                raise HandlerError(f"ticket work {work!r} is registered twice")
            spec = HandlerSpec(
                name=f"{fn.__module__}.{fn.__qualname__}", fn=fn, message_types=(),
                source=StreamRef(sub, KIND), concern=CONCERN,
                writes=frozenset(StreamRef.parse(w) for w in writes),
                appends=frozenset([sub] if appends is None else appends),
                reads=frozenset(StreamRef.parse(r) for r in reads),
                is_async=inspect.iscoroutinefunction(fn),
            )  # fmt: skip
            ex = None if exclusive is None else Exclusive.of(exclusive)
            self.deferred.methods[work] = Method(work, root, fn, spec, ex)
            self.root(root)
            if precondition is not None:
                self.deferred.preconditions[work] = precondition
            self._update_executor(sub)
            return fn

        return decorate

    def precondition(self, work: type[Message] | str, check: Precondition) -> None:
        """Run ticket ``work`` (an operation type or ``"Type.method"``) only if ``check(root)``."""
        name = work if isinstance(work, str) else self.types.of_class(work).name
        self.deferred.preconditions[name] = check

    def tickets(self, subsystem: str) -> None:
        """Have this app's bots execute ``subsystem``'s tickets (concern ``tickets`` on
        ``SUBSYSTEM/internal-ops``)."""
        from streamcqrs.handlers.tickets import Ticket

        if Ticket not in self.types:
            self.types.register(Ticket, "streamcqrs.Ticket")
        self.deferred.tickets.add(subsystem)
        self._update_executor(subsystem)

    def _update_executor(self, subsystem: str) -> None:
        """(Re-)register ``subsystem``'s executor with everything its works declare."""
        from streamcqrs.handlers.registry import HandlerSpec, StreamRef
        from streamcqrs.handlers.tickets import CONCERN, KIND, Ticket, executor, spec_union

        if subsystem not in self.deferred.tickets:
            return
        source = StreamRef(subsystem, KIND)
        # Operation work runs under its own handler's declarations, which the app's bots
        # hold already; the executor needs what its methods declare.
        works = [m.spec for m in self.deferred.methods.values() if m.spec.source == source]
        spec = HandlerSpec(
            name=f"streamcqrs.tickets:{subsystem}", fn=executor(self, subsystem),  # type: ignore[arg-type]
            message_types=(Ticket,), source=source, concern=CONCERN,
            **spec_union(subsystem, works),
        )  # fmt: skip
        self.handlers[:] = [
            s for s in self.handlers if not (s.source == source and s.concern == CONCERN)
        ]
        self.handlers.append(spec)

    # -- schedules ---------------------------------------------------------------------------

    def every(
        self,
        interval: timedelta | float,
        operation: MakeOperation,
        *,
        stream: str,
        name: str | None = None,
        object_id: str | None = None,
        misfire: Misfire = "skip",
        grace: timedelta | float | None = None,
        offset: timedelta | float = 0.0,
        catch_up_limit: int = 1000,
    ) -> Schedule:
        """Put ``operation`` (or ``operation(due)``) into ``stream`` every ``interval``.

        Exactly once per due time however many bots run; see ``handlers.schedules`` for
        ``misfire`` (skip or catch up after an outage) and ``grace``.
        """
        schedule = Schedule.every(
            interval, operation, stream=stream, name=name or _name_of(operation),
            object_id=object_id, misfire=misfire, grace=grace, offset=offset,
            catch_up_limit=catch_up_limit,
        )  # fmt: skip
        return self._add_schedule(schedule)

    def cron(
        self,
        expression: str,
        operation: MakeOperation,
        *,
        stream: str,
        name: str | None = None,
        object_id: str | None = None,
        misfire: Misfire = "skip",
        grace: timedelta | float | None = None,
        tz: str = "UTC",
        catch_up_limit: int = 1000,
    ) -> Schedule:
        """Put ``operation`` (or ``operation(due)``) into ``stream`` at each time of ``expression``
        (``"0 * * * *"``: every hour) in time zone ``tz``; needs the ``cron`` extra."""
        schedule = Schedule.cron_schedule(
            expression, operation, stream=stream, name=name or _name_of(operation),
            object_id=object_id, misfire=misfire, grace=grace, tz=tz,
            catch_up_limit=catch_up_limit,
        )  # fmt: skip
        return self._add_schedule(schedule)

    def _add_schedule(self, schedule: Schedule) -> Schedule:
        if schedule.name in self.deferred.schedules:
            raise HandlerError(
                f"a schedule named {schedule.name!r} exists already; pass name= to tell them apart"
            )
        if isinstance(schedule.make, Message):
            self.types.of_class(type(schedule.make))  # registered, or a clear error now
        self.deferred.schedules[schedule.name] = schedule
        return schedule

    def unschedule(self, name: str) -> None:
        """Remove a schedule: no bot running this app puts it any more."""
        if self.deferred.schedules.pop(name, None) is None:
            known = ", ".join(sorted(self.deferred.schedules)) or "none"
            raise HandlerError(f"no schedule named {name!r} (known: {known})")

    # -- retention ---------------------------------------------------------------------------

    def retention(
        self,
        stream: str,
        *,
        keep_done_for: timedelta | float | None = None,
        maxlen: int | None = None,
        max_age: timedelta | float | None = None,
        compact_aggregates: bool = False,
    ) -> Retention:
        """Declare what the cleaner removes from ``stream`` (see ``handlers.retention``)."""
        from streamcqrs.handlers.registry import StreamRef

        ref = StreamRef.parse(stream)
        policy = Retention(ref, seconds(keep_done_for), maxlen, seconds(max_age),
                           compact_aggregates)  # fmt: skip
        if ref.kind is Kind.DEAD_LETTERS and policy.keep_done_for is not None:
            raise ConfigurationError("dead letters have no handling status to keep; use max_age")
        self.deferred.retention[ref] = policy
        return policy

    def cleaner(
        self,
        *,
        every: timedelta | float = 60.0,
        batch: int = 500,
        pause: timedelta | float = 0.0,
        lease_ttl: timedelta | float = 30.0,
    ) -> CleanerSettings:
        """How often the cleaner runs (seconds between cycles), records per step, the pause
        between steps, and the leader lease's ttl."""
        settings = CleanerSettings(
            seconds(every) or 0.0, batch, seconds(pause) or 0.0, seconds(lease_ttl) or 0.0
        )
        self.deferred.cleaner = settings
        return settings


def _name_of(operation: MakeOperation) -> str:
    if isinstance(operation, Message):
        return type(operation).__name__
    return str(getattr(operation, "__name__", "schedule"))


def wrap_exclusive(spec: HandlerSpec, exclusive: str | Exclusive | None) -> HandlerSpec:
    """``spec`` whose handler holds ``exclusive`` while it runs (unchanged if None)."""
    if exclusive is None:
        return spec
    ex = Exclusive.of(exclusive)
    fn = exclusive_handler(spec.fn, ex, is_async=spec.is_async)
    return dataclasses.replace(spec, fn=fn, is_async=True, exclusive=ex.key)


__all__ = ["Deferrable", "Deferred", "wrap_exclusive"]
