"""What a handler gets besides its message: the streams it declared, in the roles it declared.

Everything a handler emits is buffered here as outputs; the bot writes them together with the
ack of the input in one atomic commit. Nothing is visible before that commit, and a handler
that fails or conflicts leaves nothing behind. Output message ids are derived from the input's
id, so a re-run of the same input produces the same ids (appends de-duplicate on them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import redis.asyncio
import structlog
from pydantic import BaseModel

from streamcqrs.domain.aggregate import Aggregate
from streamcqrs.domain.messages import Event, Message
from streamcqrs.domain.policy import ExecutionPolicy
from streamcqrs.domain.registry import TypeRegistry
from streamcqrs.handlers.errors import HandlerError
from streamcqrs.handlers.lifecycle import Resources
from streamcqrs.handlers.registry import HandlerSpec, StreamRef
from streamcqrs.streams import now_ms, to_ms
from streamcqrs.streams.aggregates import AggregateStore, snapshot_envelope
from streamcqrs.streams.commit import Commit, OnExisting
from streamcqrs.streams.envelope import Envelope, as_tags, encode, encode_view
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.stream import ReadOnlyStream

A = TypeVar("A", bound=Aggregate)
TagsIn = Iterable[tuple[str, str]] | Mapping[str, str] | None


@dataclass(slots=True)
class PutOutput:
    """A record to put into a stream (or park until ``due_ms``)."""

    target: StreamRef
    keys: SubsystemKeys
    envelope: Envelope
    on_existing: OnExisting = OnExisting.WRITE
    keep: int = 1
    due_ms: int | None = None
    policy: bytes = b""

    def fill(self, commit: Commit) -> None:
        """Add this output to ``commit``."""
        commit.put(self.keys, self.target.kind, self.envelope, on_existing=self.on_existing,
                   keep=self.keep, due_ms=self.due_ms, policy=self.policy)  # fmt: skip


@dataclass(slots=True)
class AppendOutput:
    """Events to append to one aggregate at an expected version."""

    subsystem: str
    keys: SubsystemKeys
    aggregate_id: str
    expected_version: int | None
    envelopes: list[Envelope] = field(default_factory=list)

    def fill(self, commit: Commit) -> None:
        """Add this output to ``commit``."""
        commit.append(self.keys, self.aggregate_id, self.envelopes, self.expected_version)


@dataclass(slots=True)
class SnapshotOutput:
    """An aggregate's state to store as a snapshot, if it is still at ``version``."""

    target: StreamRef
    keys: SubsystemKeys
    envelope: Envelope
    version: int
    keep: int = 1

    def fill(self, commit: Commit) -> None:
        """Add this output to ``commit``."""
        commit.snapshot(self.keys, self.envelope, self.version, self.keep)


@dataclass(slots=True)
class IntentOutput:
    """Any other intent to add to the commit (a ticket's receipt, a lease's fence)."""

    fill: Callable[[Commit], object]


Output = PutOutput | AppendOutput | SnapshotOutput | IntentOutput


class Context:
    """The handler's view of the world for one message. Build by the bot, one per attempt."""

    def __init__(
        self,
        spec: HandlerSpec,
        envelope: Envelope,
        *,
        entry_id: str,
        attempt: int,
        client: redis.asyncio.Redis,
        keys_of: Mapping[str, SubsystemKeys],
        types: TypeRegistry,
        logger: Any = None,
        resources: Resources | None = None,
        trace: str = "",
    ) -> None:
        self.spec = spec
        self.envelope = envelope
        self.entry_id = entry_id
        self.attempt = attempt
        self.client = client
        self.types = types
        self.resources = resources if resources is not None else Resources()
        """What the app's ``on_startup`` hooks made in this process (``handlers.lifecycle``)."""
        self.trace = trace or envelope.trace
        """The ``traceparent`` outputs carry: the handler's span, else the input's."""
        self._keys_of = keys_of
        self.outputs: list[Output] = []
        self._appends: dict[tuple[str, str], AppendOutput] = {}
        self._loaded: dict[int, tuple[str, int]] = {}
        self._count = 0
        self.log = logger or structlog.get_logger("streamcqrs.handler").bind(
            handler=spec.name, message_id=envelope.message_id
        )

    # -- facts about the input -------------------------------------------------------------

    @property
    def object_id(self) -> str:
        """The object id the input was put under (the tracking id, the aggregate id)."""
        return self.envelope.object_id

    @property
    def message_id(self) -> str:
        """The input's message id: pass it to outside systems as the idempotency key."""
        return self.envelope.message_id

    @property
    def correlation_id(self) -> str:
        """The conversation this input belongs to; outputs carry it on."""
        return self.envelope.correlation_id or self.envelope.message_id

    @property
    def tags(self) -> tuple[tuple[str, str], ...]:
        """The input's tags."""
        return self.envelope.tags

    # -- helpers ---------------------------------------------------------------------------

    def keys(self, subsystem: str) -> SubsystemKeys:
        """The key scheme of ``subsystem`` (as the app declared its partitions)."""
        found = self._keys_of.get(subsystem)
        return found if found is not None else SubsystemKeys(subsystem)

    def _next_message_id(self) -> str:
        self._count += 1
        seed = f"{self.envelope.message_id}:{self._count}".encode()
        return hashlib.blake2b(seed, digest_size=16).hexdigest()

    def _encode(
        self, message: Message, object_id: str, tags: TagsIn, message_id: str | None = None
    ) -> Envelope:
        return encode(
            message,
            object_id=object_id,
            tags=as_tags(tags),
            correlation_id=self.correlation_id,
            causation_id=self.envelope.message_id,
            message_id=message_id or self._next_message_id(),
            types=self.types,
            trace=self.trace,
        )

    def _check_write(self, target: StreamRef) -> None:
        if not self.spec.may_write(target):
            raise HandlerError(
                f"handler {self.spec.name} did not declare writes to {target}; "
                f"add {str(target)!r} to writes=[...] in its @app.handler(...)"
            )

    def _check_aggregate(self, subsystem: str) -> None:
        if subsystem not in self.spec.appends:
            raise HandlerError(
                f"handler {self.spec.name} did not declare appends to {subsystem!r} aggregates; "
                f"add {subsystem!r} to appends=[...] in its @app.handler(...)"
            )

    # -- reading ---------------------------------------------------------------------------

    async def load(
        self, cls: type[A], aggregate_id: str | int, *, subsystem: str | None = None
    ) -> A:
        """Load an aggregate of a declared subsystem (default: the handler's own)."""
        sub = subsystem or self.spec.source.subsystem
        self._check_aggregate(sub)
        self._check_id(cls.__name__, aggregate_id)
        store = AggregateStore(self.keys(sub), cls, self.client, types=self.types)
        aggregate = await store.load(str(aggregate_id))
        self._loaded[id(aggregate)] = (sub, aggregate.version)
        return aggregate

    def _check_id(self, kind: str, aggregate_id: str | int) -> None:
        """Refuse an empty aggregate id: it comes from an input put without an object id,
        and would make one aggregate of every such input."""
        if str(aggregate_id) == "":
            raise HandlerError(
                f"handler {self.spec.name} uses a {kind} with an empty id (its input has no "
                "object id?); put operations with object_id=..., or run them with "
                "Client.execute, which uses the tracking id"
            )

    def reader(self, target: str) -> ReadOnlyStream:
        """A read-only handle on a stream the handler declared in ``reads``."""
        ref = StreamRef.parse(target)
        if ref not in self.spec.reads:
            raise HandlerError(
                f"handler {self.spec.name} did not declare reads of {ref}; "
                f"add {target!r} to reads=[...]"
            )
        return ReadOnlyStream(self.keys(ref.subsystem), ref.kind, self.client, self.types)

    async def next_id(self, target: str) -> int:
        """A fresh id from a declared output stream's sequence (a tracking id)."""
        ref = StreamRef.parse(target)
        self._check_write(ref)
        key = self.keys(ref.subsystem).partition(0).sequence(ref.kind)
        # INCR, not redis-py's incr() (INCRBY, which acl.next_id does not grant)
        return int(await self.client.execute_command("INCR", key))  # type: ignore[no-untyped-call]

    # -- writing (buffered until the commit) -----------------------------------------------

    def append(
        self,
        aggregate: Aggregate,
        *events: Event,
        tags: TagsIn = None,
        subsystem: str | None = None,
    ) -> None:
        """Apply ``events`` to ``aggregate`` and append them at the version it was loaded at.

        An aggregate not loaded through ``load`` is taken as new (expected version 0) unless
        it says otherwise in ``version``.
        """
        sub, loaded_version = self._loaded.get(
            id(aggregate), (subsystem or self.spec.source.subsystem, aggregate.version)
        )
        self._check_aggregate(sub)
        self._check_id(type(aggregate).__name__, aggregate.id)
        out = self._appends.get((sub, aggregate.id))
        if out is None:
            out = AppendOutput(sub, self.keys(sub), aggregate.id, loaded_version)
            self._appends[(sub, aggregate.id)] = out
            self.outputs.append(out)
        for event in events:
            out.envelopes.append(self._encode(event, aggregate.id, tags))
            aggregate.apply(event)
            aggregate.version += 1

    def put(
        self,
        target: str,
        message: Message,
        *,
        object_id: str | int | None = None,
        tags: TagsIn = None,
        on_existing: OnExisting = OnExisting.WRITE,
        keep: int = 1,
        execute_earliest: datetime | int | None = None,
        delay: timedelta | float | None = None,
        policy: ExecutionPolicy | None = None,
        message_id: str | None = None,
    ) -> str:
        """Put ``message`` into a declared stream at commit; returns its message id.

        ``execute_earliest`` (a datetime or epoch ms) or ``delay`` (seconds) parks it until due.
        ``policy`` (default: the operation class's ``policy``) travels with the entry.
        ``message_id`` replaces the id derived from the input's (keep it deterministic: a
        re-run must produce the same one).
        """
        ref = StreamRef.parse(target)
        self._check_write(ref)
        obj = "" if object_id is None else str(object_id)
        envelope = self._encode(message, obj, tags, message_id)
        due: int | None = None
        if execute_earliest is not None:
            due = to_ms(execute_earliest, 0)
        elif delay is not None:
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
            due = now_ms() + int(seconds * 1000)
        packed = ExecutionPolicy.packed_for(message, policy)
        self.outputs.append(
            PutOutput(ref, self.keys(ref.subsystem), envelope, on_existing, keep, due, packed)
        )
        return envelope.message_id

    def put_view(
        self,
        target: str,
        object_id: str | int,
        view: BaseModel | Mapping[str, Any] | bytes,
        *,
        type_name: str = "view",
        tags: TagsIn = None,
        keep: int = 1,
    ) -> None:
        """Store a view's JSON for ``object_id`` in a declared views stream at commit."""
        ref = StreamRef.parse(target)
        self._check_write(ref)
        envelope = encode_view(
            view,
            type_name=type_name,
            object_id=str(object_id),
            tags=as_tags(tags),
            correlation_id=self.correlation_id,
            causation_id=self.envelope.message_id,
            trace=self.trace,
        )
        self.outputs.append(
            PutOutput(ref, self.keys(ref.subsystem), envelope, OnExisting.for_view(keep), keep)
        )

    def snapshot(
        self, aggregate: Aggregate, *, keep: int = 1, subsystem: str | None = None
    ) -> None:
        """Store ``aggregate`` as a snapshot in the same commit as the handler's other outputs.

        Taken at the version the aggregate has now (with the events this handler appended);
        the commit stores it only if the aggregate is still at that version when it applies,
        and nothing of it is visible if the commit fails. Declare ``writes=["<sub>/snapshots"]``.
        """
        sub, _ = self._loaded.get(id(aggregate), (subsystem or self.spec.source.subsystem, 0))
        ref = StreamRef(sub, Kind.SNAPSHOTS)
        self._check_write(ref)
        envelope = snapshot_envelope(aggregate)
        output = SnapshotOutput(ref, self.keys(sub), envelope, aggregate.version, keep)
        self.outputs.append(output)

    def submit(
        self,
        root: tuple[type[Aggregate] | str, str | int],
        work: Message | str,
        *,
        execute_earliest: datetime | int | None = None,
        delay: timedelta | float | None = None,
        keep_receipt: timedelta | float | None = None,
        subsystem: str | None = None,
    ) -> str:
        """Submit a ticket at commit: ``work`` on aggregate ``root`` later; returns its id.

        See ``handlers.tickets``; the ticket goes to ``<subsystem>/internal-ops`` (default:
        the handler's own subsystem), which the handler must declare in ``writes``.
        """
        from streamcqrs.handlers.tickets import ticket_outputs

        sub = subsystem or self.spec.source.subsystem
        self._check_write(StreamRef(sub, Kind.INTERNAL_OPERATIONS))
        ticket_id, outputs = ticket_outputs(
            self.keys(sub), root, work, execute_earliest=execute_earliest, delay=delay,
            keep_receipt=keep_receipt, types=self.types, message_id=self._next_message_id(),
            correlation_id=self.correlation_id, causation_id=self.envelope.message_id,
        )  # fmt: skip
        self.outputs += outputs
        return ticket_id

    def fill(self, commit: Commit) -> None:
        """Add every buffered output to ``commit`` (the runner adds the input's outcome)."""
        for output in self.outputs:
            output.fill(commit)


__all__ = ["AppendOutput", "Context", "IntentOutput", "Output", "PutOutput", "SnapshotOutput"]
