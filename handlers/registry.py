"""Declaring handlers: which messages, from which stream, for which concern, writing where.

A handler declares everything it touches. The bot gives it a context that can write only to
the streams it declared (``writes``), append only to aggregates of the subsystems it declared
(``appends``) and read only what it declared (``reads``); anything else raises HandlerError.
The same declarations generate least-privilege Redis ACL users.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.domain.messages import Message
from streamcqrs.domain.registry import TypeRegistry, registry
from streamcqrs.handlers.deferred import Deferrable, Deferred, wrap_exclusive
from streamcqrs.handlers.errors import HandlerError
from streamcqrs.handlers.exclusive import Exclusive
from streamcqrs.handlers.lifecycle import Hook
from streamcqrs.streams.keys import Kind, check_concern
from streamcqrs.streams.subsystem import parse_stream

if TYPE_CHECKING:
    from streamcqrs.handlers.saga import Saga

F = TypeVar("F", bound=Callable[..., Any])
H = TypeVar("H", bound=Hook)
Start = Literal["now", "beginning"] | datetime | None
"""Where a new consumer group starts reading its stream."""
FACT_KINDS = frozenset({Kind.EVENTS, Kind.VIEWS, Kind.SNAPSHOTS})
"""Streams of facts: a concern added later starts at "now" unless it says otherwise."""
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
        try:
            return cls(*parse_stream(spec))
        except ConfigurationError as exc:
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
    start: Start = None
    """Where a new consumer group starts (see ``App.handler``); None: by stream kind."""
    broadcast: bool = False
    """Every bot process gets every entry (a group per process), and no status is kept."""
    ordered: bool = False
    """Each object's entries are handled one at a time, in stream order, across retries."""
    exclusive: str = ""
    """The key this handler holds while it runs (``handlers.exclusive``); empty: none."""

    def may_write(self, target: StreamRef) -> bool:
        """True if the handler declared ``target`` among its outputs."""
        return target in self.writes

    def start_from(self) -> str:
        """The stream id a new consumer group of this handler starts after.

        ``"beginning"``: every entry ever put; ``"now"``: only entries put from now on; a
        datetime: entries put at or after it. The default is the beginning for operation
        streams (a work queue: an operation put before any bot ran must still be handled)
        and now for event, view and snapshot streams (facts many concerns pick from: a
        concern added to a running system must not replay the side effects of its whole
        history; a projection that wants the history declares ``start="beginning"``). A bot
        makes every group of its app when it starts, so "now" is when the app's first bot
        started, whichever subsystems each process runs.
        """
        start = self.start
        if start is None:
            start = "now" if self.source.kind in FACT_KINDS or self.broadcast else "beginning"
        if start == "beginning":
            return "0"
        if start == "now":
            return "$"
        if isinstance(start, datetime):
            moment = int(start.timestamp() * 1000)
            return f"{moment - 1}-18446744073709551615" if moment > 0 else "0"
        raise HandlerError(f"start={start!r} must be 'now', 'beginning' or a datetime")


@dataclass
class App(Deferrable):
    """A set of handlers and the subsystems they run over; what ``streamcqrs run`` loads.

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
    startup: list[Hook] = field(default_factory=list)
    """Hooks each bot process runs before it reads (``on_startup``)."""
    shutdown: list[Hook] = field(default_factory=list)
    """Hooks each bot process runs after its work is drained (``on_shutdown``)."""
    deferred: Deferred = field(default_factory=Deferred)
    """Ticket work, schedules, retention: see ``handlers.deferred``."""

    @classmethod
    def load(cls, spec: str) -> App:
        """The App that ``MODULE:APP`` names: ``shop:app``, ``shop.py:app``, ``pkg.bots:app``.

        The module is imported with the current directory on the import path, as
        ``python -m`` would. Every command that takes an app loads it here; a spec that
        names no App raises ConfigurationError saying what is wrong and, where a name is
        close, "did you mean ...?".
        """
        return load_app(spec)

    def on_startup(self, hook: H) -> H:
        """Run ``hook(resources)`` in each bot process before it reads anything.

        What it puts into ``resources`` (an HTTP client, a pool) handlers get as
        ``ctx.resources[name]``; see ``handlers.lifecycle``.
        """
        self.startup.append(hook)
        return hook

    def on_shutdown(self, hook: H) -> H:
        """Run ``hook(resources)`` in each bot process after its work is drained (close what
        ``on_startup`` opened); shutdown hooks run in reverse order."""
        self.shutdown.append(hook)
        return hook

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
        start: Start = None,
        broadcast: bool = False,
        ordered: bool = False,
        exclusive: str | Exclusive | None = None,
    ) -> Callable[[F], F]:
        """Register a function as the handler of ``message_types`` arriving on ``stream``.

        ``concern`` names the consumer group (default: the function's name); each concern
        handles every record of the stream once. ``writes`` lists ``"subsystem/kind"`` streams
        it puts into, ``appends`` the subsystems whose aggregates it changes, ``reads`` the
        streams it may read. ``start`` says where its consumer group starts when it is first
        created: ``"beginning"``, ``"now"`` or a datetime (default: the beginning of an
        operation stream, now on an event stream; see ``HandlerSpec.start_from``).
        ``broadcast``: every bot process gets every entry (cache invalidation, replica
        sync), through a group of its own that is removed when the process is gone; such a
        handler keeps no handling status. ``ordered``: the entries of one object (the
        envelope's object id) are handled one at a time and in stream order, across retries:
        while one is being retried, later entries of its object wait behind it (other
        objects go on). Costs a script call per read and a hash field per object in flight.
        ``exclusive`` names a key only one handler may hold at a time, across every bot (see
        ``handlers.exclusive``).
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
                start=start,
                broadcast=broadcast,
                ordered=ordered,
            )
            spec.start_from()  # a bad start fails here, not in the bot
            if ordered and broadcast:
                raise HandlerError(
                    f"{spec.name}: ordered=True needs a shared consumer group; a broadcast "
                    "concern has one per process (drop one of the two)"
                )
            spec = wrap_exclusive(spec, exclusive)
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
                same_group = known.source == spec.source and known.concern == spec.concern
                declared = (known.start, known.broadcast, known.ordered)
                if same_group and declared != (start, broadcast, ordered):
                    raise HandlerError(
                        f"{spec.name} and {known.name} share the consumer group {spec.concern!r} "
                        f"on {source} but not its start, broadcast or ordered; declare the same, "
                        "or give one another concern"
                    )
            self.handlers.append(spec)
            return fn

        return decorate

    def saga(self, saga: Saga) -> Saga:
        """Run ``saga`` (a ``handlers.saga.Saga``): add the handlers that start it, record
        its outcomes, time it out and end it. Returns it, for ``saga.start(ctx, ...)``."""
        saga.register(self)
        return saga

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

    def input_subsystems(self) -> set[str]:
        """Subsystems whose streams a handler of this app consumes (what ``--only`` names)."""
        return {spec.source.subsystem for spec in self.handlers}

    def delayed_streams(self) -> set[StreamRef]:
        """Streams beyond its inputs whose delayed sets the app's bots move (``bots.delayed``):
        every stream a handler or ticket work declares in ``writes``, ticket work's own
        streams, and the ticket streams the app executes. The ACL bot user is granted the same.
        """
        refs = {w for spec in self.handlers for w in spec.writes}
        for method in self.deferred.methods.values():
            refs.add(method.spec.source)
            refs.update(method.spec.writes)
        refs.update(StreamRef(sub, Kind.INTERNAL_OPERATIONS) for sub in self.deferred.tickets)
        return refs

    def subsystems(self) -> set[str]:
        """Every subsystem a handler reads, writes or appends to."""
        names = set(self.partitions)
        for spec in self.handlers:
            names.add(spec.source.subsystem)
            names.update(w.subsystem for w in spec.writes)
            names.update(r.subsystem for r in spec.reads)
            names.update(spec.appends)
        return names


# -- loading an app by name ----------------------------------------------------------------

FORM = "MODULE:APP, e.g. shop:app or myapp.bots:app"


def load_app(spec: str) -> App:
    """``App.load``: import ``MODULE`` and return its App ``APP`` (see there)."""
    module_part, sep, attribute = spec.partition(":")
    if not sep or not module_part or not attribute:
        hint = _apps_hint(module_part) if module_part and not sep else ""
        raise ConfigurationError(f"app {spec!r} must be written {FORM}{hint}")
    module = _import(module_part)
    name = module.__name__
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(
                f"module {name!r} has no attribute {attribute!r}{_suggest(module, attribute)}"
            ) from None
    if not isinstance(found, App):
        kind = type(found).__name__
        raise ConfigurationError(
            f"{name}:{attribute} is a {kind}, not a streamcqrs App{_suggest(module, attribute)}"
        )
    return found


def _import(module_part: str) -> ModuleType:
    """Import ``shop``, ``pkg.shop`` or ``path/to/shop.py`` with its folder on the path."""
    if module_part.endswith(".py"):
        path = Path(module_part).resolve()
        here = Path.cwd()
        if path.is_relative_to(here):  # pkg/shop.py is the module pkg.shop, as -m names it
            folder, name = str(here), ".".join(path.relative_to(here).with_suffix("").parts)
        else:
            folder, name = str(path.parent), path.stem
    else:
        folder, name = os.getcwd(), module_part
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise ConfigurationError(
                f"no module {name!r} in {folder} or on the import path"
                f"{_module_hint(name, folder)}; run the command from the folder that holds "
                "it, or add that folder to PYTHONPATH"
            ) from None
        raise ConfigurationError(
            f"importing {name!r} failed: {exc}; install what it imports"
        ) from None


def _module_hint(name: str, folder: str) -> str:
    """`` (did you mean shop?)`` when a module in ``folder`` has a close name."""
    parent, _, leaf = name.rpartition(".")
    root = Path(folder, *parent.split(".")) if parent else Path(folder)
    try:
        candidates = [
            p.stem if p.suffix == ".py" else p.name
            for p in root.iterdir()
            if p.suffix == ".py" or (p / "__init__.py").exists()
        ]
    except OSError:
        return ""
    close = difflib.get_close_matches(leaf, candidates, n=1)
    return f" (did you mean {'.'.join([*filter(None, [parent]), close[0]])}?)" if close else ""


def _apps_of(module: ModuleType) -> list[str]:
    """Names of the App objects a module holds."""
    return sorted(n for n, v in vars(module).items() if isinstance(v, App))


def _suggest(module: ModuleType, attribute: str) -> str:
    """``; did you mean shop:app?`` from the module's Apps (closest name first)."""
    apps = _apps_of(module)
    if not apps:
        return f"; module {module.__name__!r} defines no streamcqrs App"
    close = difflib.get_close_matches(attribute, apps, n=1, cutoff=0.0) or apps
    return f"; did you mean {module.__name__}:{close[0]}?"


def _apps_hint(module_part: str) -> str:
    """``; did you mean shop:app?`` for a spec without ``:APP``, if the module imports."""
    try:
        module = _import(module_part)
    except ConfigurationError:
        return ""
    apps = _apps_of(module)
    return f"; did you mean {module.__name__}:{apps[0]}?" if apps else ""
