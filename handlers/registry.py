"""Declaring handlers: which messages, from which stream, for which concern, writing where.

A handler declares everything it touches. The bot gives it a context that can write only to
the streams it declared (``writes``), append only to aggregates of the subsystems it declared
(``appends``) and read only what it declared (``reads``); anything else raises HandlerError.
The same declarations generate least-privilege Redis ACL users.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streamcqrs.domain.messages import Message
from streamcqrs.domain.registry import TypeRegistry, registry
from streamcqrs.handlers.errors import HandlerError
from streamcqrs.streams.keys import Kind, check_concern
from streamcqrs.streams.subsystem import as_kind

F = TypeVar("F", bound=Callable[..., Any])
HandlerFn = Callable[[Any, Any], Awaitable[None] | None]


@dataclass(frozen=True, slots=True, order=True)
class StreamRef:
    """One stream of one subsystem, written ``"subsystem/kind"`` (``"email/client-ops"``)."""

    subsystem: str
    kind: Kind

    @classmethod
    def parse(cls, spec: str | StreamRef) -> StreamRef:
        """Parse ``"subsystem/kind"``; raise HandlerError saying the form if it is not one."""
        if isinstance(spec, StreamRef):
            return spec
        subsystem, sep, kind = spec.partition("/")
        if not sep or not subsystem:
            raise HandlerError(f"stream {spec!r} must be written 'subsystem/kind'")
        try:
            return cls(subsystem, as_kind(kind))
        except ValueError as exc:
            raise HandlerError(str(exc)) from None

    def __str__(self) -> str:
        return f"{self.subsystem}/{self.kind}"


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """One registered handler and everything it declared."""

    name: str
    fn: HandlerFn
    message_types: tuple[type[Message], ...]
    source: StreamRef
    concern: str
    writes: frozenset[StreamRef] = frozenset()
    appends: frozenset[str] = frozenset()
    reads: frozenset[StreamRef] = frozenset()
    is_async: bool = True

    def may_write(self, target: StreamRef) -> bool:
        """True if the handler declared ``target`` among its outputs."""
        return target in self.writes


@dataclass
class App:
    """A set of handlers and the subsystems they run over; what ``python -m bots run`` loads.

    >>> app = App("notifications")
    >>> @app.handler(SendNotification, stream="notification/client-ops",
    ...              appends=["notification"], writes=["email/client-ops"])
    ... async def send(op: SendNotification, ctx: Context) -> None: ...
    """

    name: str = "app"
    types: TypeRegistry = field(default=registry)
    partitions: dict[str, int] = field(default_factory=dict)
    handlers: list[HandlerSpec] = field(default_factory=list)
    ignored: dict[StreamRef, set[type[Message]]] = field(default_factory=dict)

    def subsystem(self, name: str, *, partitions: int = 1) -> None:
        """Declare a subsystem's partition count (default 1)."""
        self.partitions[name] = partitions

    def partitions_of(self, subsystem: str) -> int:
        """The partition count declared for ``subsystem``."""
        return self.partitions.get(subsystem, 1)

    def handler(
        self,
        *message_types: type[Message],
        stream: str,
        concern: str | None = None,
        writes: Iterable[str] = (),
        appends: Iterable[str] = (),
        reads: Iterable[str] = (),
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Register a function as the handler of ``message_types`` arriving on ``stream``.

        ``concern`` names the consumer group (default: the function's name); each concern
        handles every record of the stream once. ``writes`` lists ``"subsystem/kind"`` streams
        it puts into, ``appends`` the subsystems whose aggregates it changes, ``reads`` the
        streams it may read.
        """
        if not message_types:
            raise HandlerError("a handler must name at least one message type it handles")
        source = StreamRef.parse(stream)

        def decorate(fn: F) -> F:
            for cls in message_types:
                self.types.of_class(cls)  # registered, or a clear error now, not at run time
            spec = HandlerSpec(
                name=name or f"{fn.__module__}.{fn.__qualname__}",
                fn=fn,
                message_types=tuple(message_types),
                source=source,
                concern=check_concern(concern or fn.__name__),
                writes=frozenset(StreamRef.parse(w) for w in writes),
                appends=frozenset(appends),
                reads=frozenset(StreamRef.parse(r) for r in reads),
                is_async=inspect.iscoroutinefunction(fn),
            )
            for known in self.handlers:
                if (
                    known.source == spec.source
                    and known.concern == spec.concern
                    and (set(known.message_types) & set(spec.message_types))
                ):
                    raise HandlerError(
                        f"{spec.name} and {known.name} both handle the same type on "
                        f"{source} for concern {spec.concern!r}; give one another concern"
                    )
            self.handlers.append(spec)
            return fn

        return decorate

    def ignore(self, *message_types: type[Message], stream: str) -> None:
        """Drop these types on ``stream`` without a handler (acked, no dead letter).

        An operation no handler takes is dead-lettered ("no handler for TYPE on STREAM") so
        nothing is lost unnoticed; declare here the ones the app means to drop. Event, view
        and snapshot streams need no declaration: a concern skips the types it does not take.
        """
        for cls in message_types:
            self.types.of_class(cls)  # registered, or a clear error now
        self.ignored.setdefault(StreamRef.parse(stream), set()).update(message_types)

    def ignored_on(self, stream: StreamRef) -> set[type[Message]]:
        """The types the app drops on ``stream`` (see ``ignore``)."""
        return set(self.ignored.get(stream, ()))

    def groups(self) -> dict[tuple[StreamRef, str], list[HandlerSpec]]:
        """Handlers by (stream, concern): one consumer group each."""
        out: dict[tuple[StreamRef, str], list[HandlerSpec]] = {}
        for spec in self.handlers:
            out.setdefault((spec.source, spec.concern), []).append(spec)
        return out

    def subsystems(self) -> set[str]:
        """Every subsystem a handler reads, writes or appends to."""
        names = set(self.partitions)
        for spec in self.handlers:
            names.add(spec.source.subsystem)
            names.update(w.subsystem for w in spec.writes)
            names.update(r.subsystem for r in spec.reads)
            names.update(spec.appends)
        return names
