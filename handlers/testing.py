"""Run a handler in a unit test and assert on what it emitted, without a server or a bot.

>>> from streamcqrs.handlers.testing import HandlerTest
>>> test = HandlerTest(app)                          # in-memory streams (fakeredis)
>>> emitted = await test.send(PlaceOrder(sku="A-1"), object_id="7")
>>> assert emitted.events == [OrderPlaced(sku="A-1")]
>>> assert (await test.load(Order, "7")).sku == "A-1"

``send`` finds the handler the app registered for the message's type, runs it with a real
``Context`` and commits its outputs the way a bot does (versioned appends, puts, views,
delayed puts), so the next ``send`` sees the state the first one left. ``Retry``, ``NotYet``
and a handler's own errors come out of ``send`` as raised, for the test to assert on.
Pass a client on a real server instead of the in-memory one to test against it.

Handlers that use ``ctx.resources`` get what the app's ``on_startup`` hooks make when the test
runs them (``async with HandlerTest(app) as test:``, which runs the ``on_shutdown`` hooks at
the end), or what the test hands in (``HandlerTest(app, resources={"http": fake})``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import redis.asyncio

from streamcqrs.domain.aggregate import Aggregate
from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.domain.messages import Event, Message
from streamcqrs.handlers import lifecycle
from streamcqrs.handlers.context import AppendOutput, Context, PutOutput
from streamcqrs.handlers.delivery import Delivery, Source, Verdict
from streamcqrs.handlers.errors import HandlerError
from streamcqrs.handlers.registry import App, HandlerSpec, StreamRef
from streamcqrs.handlers.runner import RetryPolicy, Runner
from streamcqrs.streams.commit import Commit, Input
from streamcqrs.streams.connection import is_cluster
from streamcqrs.streams.envelope import JSON, as_tags, decode, encode
from streamcqrs.streams.keys import SubsystemKeys
from streamcqrs.streams.subsystem import Subsystem
from streamcqrs.streams.testing import MemoryServer

A = TypeVar("A", bound=Aggregate)


@dataclass(frozen=True, slots=True)
class Put:
    """One record a handler put: where, what, under which object id, and when it is due."""

    stream: str
    message: Message | bytes
    object_id: str
    tags: tuple[tuple[str, str], ...] = ()
    due_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Emitted:
    """What one handler run committed, decoded back into messages."""

    events: list[Event] = field(default_factory=list)
    """Events appended, in order, over every aggregate."""
    appends: dict[str, list[Event]] = field(default_factory=dict)
    """Events appended per aggregate id."""
    puts: list[Put] = field(default_factory=list)
    """Operations, saga entries and delayed puts; views as their JSON bytes."""

    def put_into(self, stream: str) -> list[Put]:
        """The puts into ``stream`` ("subsystem/kind")."""
        ref = StreamRef.parse(stream)
        return [p for p in self.puts if StreamRef.parse(p.stream) == ref]


class HandlerTest:
    """An app's handlers over in-memory streams (or a given client), one message at a time."""

    def __init__(
        self,
        app: App,
        client: redis.asyncio.Redis | None = None,
        *,
        policy: RetryPolicy | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        if client is not None and is_cluster(client):
            raise ConfigurationError(
                "HandlerTest runs handlers on one server or in memory: on a cluster, outputs "
                "for other partitions go through outboxes the bots' relays forward; give it "
                "a single server's client, or none (in memory)"
            )
        self.resources = lifecycle.Resources(resources or {})
        """What handlers get as ``ctx.resources``: given here, or made by ``start``."""
        self.client = client if client is not None else MemoryServer().client()
        self.keys_of: Mapping[str, SubsystemKeys] = {
            name: SubsystemKeys(name, app.partitions_of(name)) for name in app.subsystems()
        }
        self._sent = 0
        self.runner = Runner(
            self.client, self.keys_of, policy=policy or RetryPolicy(), actor="test",
            resources=self.resources,
        )  # fmt: skip

    async def start(self) -> None:
        """Run the app's ``on_startup`` hooks, as a bot process does before it reads."""
        await lifecycle.start(self.app.startup, self.resources)

    async def stop(self) -> None:
        """Run the app's ``on_shutdown`` hooks, as a stopping bot process does."""
        await lifecycle.stop(self.app.shutdown, self.resources)

    async def __aenter__(self) -> HandlerTest:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def subsystem(self, name: str) -> Subsystem:
        """A subsystem on the test's client, to read what handlers wrote or to seed data."""
        return Subsystem(name, self.client, partitions=self.app.partitions_of(name))

    async def load(self, aggregate: type[A], aggregate_id: str, *, subsystem: str = "") -> A:
        """An aggregate as the handlers left it (default subsystem: the app's name)."""
        return await self.subsystem(subsystem or self.app.name).aggregates(aggregate).load(
            aggregate_id
        )

    def handler_for(self, message: Message, stream: str | None = None) -> HandlerSpec:
        """The one handler registered for ``message``'s type (on ``stream`` if given)."""
        wanted = StreamRef.parse(stream) if stream else None
        found = [
            spec
            for spec in self.app.handlers
            if isinstance(message, spec.message_types)
            and (wanted is None or spec.source == wanted)
        ]
        if len(found) != 1:
            where = f" on {wanted}" if wanted else ""
            names = [spec.name for spec in found] or ["none"]
            raise HandlerError(
                f"{len(found)} handlers take {type(message).__name__}{where} ({', '.join(names)}); "
                "pass stream='subsystem/kind' to pick one"
            )
        return found[0]

    async def send(
        self,
        message: Message,
        *,
        object_id: str | int = "",
        tags: Mapping[str, str] | None = None,
        stream: str | None = None,
        attempt: int = 1,
    ) -> Emitted:
        """Run the handler of ``message`` once, commit what it emitted, and return that.

        The run and its commit are the bot's own (``Runner.handle``): a version conflict runs
        the handler again on fresh state, and a handler that raises leaves the state a bot
        would (the retry parked, or the record Failed); then ``send`` raises what the handler
        raised, for the test to assert on.
        """
        spec = self.handler_for(message, stream)
        envelope = encode(
            message, object_id=str(object_id), tags=as_tags(tags), types=self.app.types
        )
        self._sent += 1
        keys = self.keys_of.get(spec.source.subsystem) or SubsystemKeys(spec.source.subsystem)
        part = keys.for_object(envelope.object_id or envelope.message_id)
        by_class = {cls: spec for cls in spec.message_types}
        source = Source(spec.source, spec.concern, part, keys, by_class, self.app.types)
        raw = envelope.entry()
        entry = Input(part, spec.source.kind, spec.concern, "test", f"{self._sent}-0",
                      envelope.message_id, raw, envelope, in_group=False)  # fmt: skip
        delivery = Delivery(source, entry, Verdict.HANDLE, message, spec, attempt)
        result = await self.runner.handle(delivery, self._commit)
        if result.error is not None:
            raise result.error
        assert result.context is not None
        return self._emitted(result.context)

    async def _commit(self, commit: Commit) -> list[Any]:
        return await commit.run(self.client)

    def _emitted(self, ctx: Context) -> Emitted:
        emitted = Emitted()
        for output in ctx.outputs:
            if isinstance(output, AppendOutput):
                events = [self._decode(e) for e in output.envelopes]
                typed = [e for e in events if isinstance(e, Event)]
                emitted.events.extend(typed)
                emitted.appends.setdefault(output.aggregate_id, []).extend(typed)
            elif isinstance(output, PutOutput):
                envelope = output.envelope
                body: Message | bytes = (
                    envelope.payload if envelope.fmt == JSON else self._decode(envelope)
                )
                emitted.puts.append(
                    Put(str(output.target), body, envelope.object_id, envelope.tags, output.due_ms)
                )
        return emitted

    def _decode(self, envelope: Any) -> Message:
        return decode("test", "0-0", envelope, self.app.types)


__all__ = ["Emitted", "HandlerTest", "Put"]

