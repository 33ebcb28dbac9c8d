"""What an entry means for a concern: run a handler, skip it, leave it, or dead-letter it.

A ``Source`` is one (stream, concern) of an app on one partition: a consumer group, named
after the concern. ``Source.classify`` turns a raw entry into a ``Delivery`` that says what to
do with it, and never raises for bad input:

=========  ===================================================================================
HANDLE     a registered type this concern handles: run its handler
SKIP       not this concern's business: another concern's retry copy, a type another concern
           of the app handles, a type the app ignores on this stream, any type it does not
           handle on an event, view or snapshot stream
DEAD       bad input (undecodable, unknown type, invalid payload), or an operation no handler
           of the app takes on this stream: "no handler for TYPE on STREAM"
=========  ===================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from streamcqrs.domain.messages import Message
from streamcqrs.domain.policy import ExecutionPolicy
from streamcqrs.domain.registry import TypeRegistry
from streamcqrs.handlers.registry import App, HandlerSpec, StreamRef
from streamcqrs.streams.commit import ATTEMPT_FIELD, CONCERN_FIELD, POLICY_FIELD, Input
from streamcqrs.streams.envelope import decode, parse
from streamcqrs.streams.errors import DecodeError
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys

SKIPPED_WHEN_UNHANDLED = frozenset({Kind.EVENTS, Kind.VIEWS, Kind.SNAPSHOTS, Kind.DEAD_LETTERS})
"""Streams whose entries a concern may ignore by type: facts many concerns pick from. Every
entry of an operation or saga stream is work for someone: with no handler it is dead-lettered."""


class Verdict(Enum):
    """What the bot does with an entry."""

    HANDLE = "handle"
    SKIP = "skip"  # ack without running
    DEAD = "dead"  # ack and dead-letter


class NoHandler(DecodeError):
    """An operation of a registered type that no handler of the app takes on its stream."""


@dataclass(slots=True)
class Delivery:
    """One entry delivered to a concern, and what it was found to be."""

    source: Source
    input: Input
    verdict: Verdict
    message: Message | None = None
    spec: HandlerSpec | None = None
    attempt: int = 1
    error: Exception | None = None
    crashes: int = 0
    """Deliveries that ended without any commit (the bot died or hung): a crash loop."""
    taken_over: bool = False
    """Taken over from a consumer that died or hung (XAUTOCLAIM), not read new."""
    policy: ExecutionPolicy | None = None
    """The execution policy the entry carries (None: the bot's settings)."""
    holds_turn: bool = False
    """It took its object's turn when read (an ordered source): settled for good, it hands
    the turn on to the next entry of its object."""

    @property
    def entry_id(self) -> str:
        """The entry's id in its stream."""
        return self.input.entry_id

    @property
    def message_id(self) -> str:
        """The record's id: the message id, or the entry id for an entry that has none."""
        return self.input.message_id


@dataclass(slots=True)
class Source:
    """One consumer group (the concern) on one partition of one stream."""

    ref: StreamRef
    concern: str
    part: PartitionKeys
    keys: SubsystemKeys
    specs: dict[type[Message], HandlerSpec]
    types: TypeRegistry
    others: frozenset[type[Message]] = frozenset()
    """Types other concerns of the app handle on this stream, or the app ignores there."""
    start_from: str = "0"
    """The stream id its consumer group starts after when it is created."""
    broadcast: bool = False
    """A group per bot process (``for_process``); no handling status is kept."""
    ordered: bool = False
    """Each object's entries in stream order, one at a time (read with ``read_in_turn``)."""
    group: str = ""
    """The consumer group: the concern, or for broadcast ``concern.<consumer>``."""
    key: str = field(init=False)
    name: str = field(init=False)
    """``stream-key/concern``: unique per consumer group, for logs and bookkeeping."""

    def __post_init__(self) -> None:
        self.key = self.part.stream(self.ref.kind)
        self.group = self.group or self.concern
        self.name = f"{self.key}/{self.group}"

    def for_process(self, consumer: str) -> Source:
        """This source as one bot process runs it: a broadcast source gets its own group."""
        if not self.broadcast:
            return self
        return replace(self, group=f"{self.concern}.{consumer}")

    def __str__(self) -> str:
        return self.name

    def classify(self, entry_id: str, raw: dict[bytes, bytes], consumer: str) -> Delivery:
        """Decide what to do with one raw entry read by ``consumer`` (never raises)."""
        delivery = self._classify(entry_id, raw, consumer)
        if self.ordered:  # what read_in_turn.lua took a turn for, whatever the verdict
            only = raw.get(CONCERN_FIELD)
            delivery.holds_turn = bool(
                raw.get(b"id") and raw.get(b"obj") and (not only or only == self.group.encode())
            )
        return delivery

    def _classify(  # noqa: PLR0911 - one return per verdict, in the order they are decided
        self, entry_id: str, raw: dict[bytes, bytes], consumer: str
    ) -> Delivery:
        kind = self.ref.kind
        try:
            envelope = parse(self.key, entry_id, raw)
        except DecodeError as exc:
            inp = Input(self.part, kind, self.group, consumer, entry_id, entry_id, raw)
            return Delivery(self, inp, Verdict.DEAD, error=exc)
        inp = Input(
            self.part, kind, self.group, consumer, entry_id, envelope.message_id, raw, envelope
        )
        only = raw.get(CONCERN_FIELD)
        if only and only.decode(errors="replace") != self.group:
            return Delivery(self, inp, Verdict.SKIP)
        try:
            cls = self.types.of_name(envelope.type).cls
        except Exception as exc:  # UnknownMessageType: bad input, never a crash
            error = DecodeError(self.key, entry_id, str(exc))
            return Delivery(self, inp, Verdict.DEAD, error=error)
        spec = self.specs.get(cls)
        if spec is None:
            if kind in SKIPPED_WHEN_UNHANDLED or cls in self.others:
                return Delivery(self, inp, Verdict.SKIP)
            reason = (
                f"no handler for {envelope.type} on {self.ref}; add one, or declare "
                f"app.ignore({cls.__name__}, stream={str(self.ref)!r}) if it is meant to be dropped"
            )
            return Delivery(self, inp, Verdict.DEAD, error=NoHandler(self.key, entry_id, reason))
        try:
            message = decode(self.key, entry_id, envelope, self.types)
            attempt = int(raw.get(ATTEMPT_FIELD) or 1)
            packed = raw.get(POLICY_FIELD)
            policy = ExecutionPolicy.unpack(packed) if packed else None
        except (DecodeError, ValueError) as exc:  # ConfigurationError is a ValueError
            return Delivery(self, inp, Verdict.DEAD, error=exc)
        return Delivery(self, inp, Verdict.HANDLE, message, spec, attempt, policy=policy)


def sources(app: App, only: tuple[str, ...] = ()) -> list[Source]:
    """Every (stream, concern, partition) of ``app``, limited to subsystems in ``only``."""
    out: list[Source] = []
    groups = app.groups()
    for (ref, concern), specs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if only and ref.subsystem not in only:
            continue
        keys = SubsystemKeys(ref.subsystem, app.partitions_of(ref.subsystem))
        by_class = {cls: spec for spec in specs for cls in spec.message_types}
        others = {
            cls
            for (other_ref, other), other_specs in groups.items()
            if other_ref == ref and other != concern
            for spec in other_specs
            for cls in spec.message_types
        }
        others |= app.ignored_on(ref)
        for part in keys.all():
            skipped = frozenset(others - set(by_class))
            first = specs[0]
            source = Source(ref, concern, part, keys, by_class, app.types, skipped,
                            first.start_from(), first.broadcast, first.ordered)  # fmt: skip
            out.append(source)
    return out


__all__ = ["SKIPPED_WHEN_UNHANDLED", "Delivery", "NoHandler", "Source", "Verdict", "sources"]
