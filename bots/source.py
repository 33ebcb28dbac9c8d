"""What a bot consumes: one consumer group on one partition of a stream, and its entries.

A ``Source`` is one (stream, concern) of the app on one partition; its consumer group is
named after the concern. ``Source.classify`` turns a raw entry into a ``Delivery`` that says
what to do with it: run a handler, skip it (not this concern's business), or dead-letter it
(undecodable, unknown type, invalid payload).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from streamcqrs.domain.errors import UnknownMessageType
from streamcqrs.domain.messages import Message
from streamcqrs.domain.registry import TypeRegistry
from streamcqrs.handlers.registry import App, HandlerSpec, StreamRef
from streamcqrs.streams.envelope import Envelope, decode, parse
from streamcqrs.streams.errors import DecodeError
from streamcqrs.streams.keys import PartitionKeys, SubsystemKeys

ATTEMPT_FIELD = b"att"
"""Entry field beside the envelope: which attempt this delivery is (absent: the first)."""
CONCERN_FIELD = b"for"
"""Entry field beside the envelope: the one concern a retried entry is for (absent: all)."""


class Verdict(Enum):
    """What the bot does with an entry."""

    HANDLE = "handle"
    SKIP = "skip"  # ack without running: another concern's retry, or a type we don't handle
    DEAD = "dead"  # ack and dead-letter: bad input


@dataclass(slots=True)
class Delivery:
    """One entry delivered to this bot, and what it was found to be."""

    source: Source
    entry_id: str
    raw: dict[bytes, bytes]
    verdict: Verdict
    envelope: Envelope | None = None
    message: Message | None = None
    spec: HandlerSpec | None = None
    attempt: int = 1
    error: Exception | None = None
    crashes: int = 0
    """Deliveries that ended without any commit (the bot died or hung): a crash loop."""

    @property
    def message_id(self) -> str:
        """The message id, or the entry id for an entry that has none."""
        return self.envelope.message_id if self.envelope else self.entry_id


@dataclass(slots=True)
class Source:
    """One consumer group (the concern) on one partition of one stream."""

    ref: StreamRef
    concern: str
    part: PartitionKeys
    keys: SubsystemKeys
    specs: dict[type[Message], HandlerSpec]
    types: TypeRegistry
    key: str = field(init=False)
    name: str = field(init=False)
    """``stream-key/concern``: unique per consumer group, for logs and bookkeeping."""

    def __post_init__(self) -> None:
        self.key = self.part.stream(self.ref.kind)
        self.name = f"{self.key}/{self.concern}"

    @property
    def group(self) -> str:
        """The consumer group's name: the concern."""
        return self.concern

    def __str__(self) -> str:
        return self.name

    def classify(self, entry_id: str, raw: dict[bytes, bytes]) -> Delivery:
        """Decide what to do with one raw entry (never raises for bad input)."""
        try:
            envelope = parse(self.key, entry_id, raw)
        except DecodeError as exc:
            return Delivery(self, entry_id, raw, Verdict.DEAD, error=exc)
        only = raw.get(CONCERN_FIELD)
        if only and only.decode(errors="replace") != self.concern:
            return Delivery(self, entry_id, raw, Verdict.SKIP, envelope)
        try:
            cls = self.types.of_name(envelope.type).cls
        except UnknownMessageType as exc:
            error = DecodeError(self.key, entry_id, str(exc))
            return Delivery(self, entry_id, raw, Verdict.DEAD, envelope, error=error)
        spec = self.specs.get(cls)
        if spec is None:  # a registered type this concern does not handle
            return Delivery(self, entry_id, raw, Verdict.SKIP, envelope)
        try:
            message = decode(self.key, entry_id, envelope, self.types)
            attempt = int(raw.get(ATTEMPT_FIELD) or 1)
        except (DecodeError, ValueError) as exc:
            return Delivery(self, entry_id, raw, Verdict.DEAD, envelope, error=exc)
        return Delivery(self, entry_id, raw, Verdict.HANDLE, envelope, message, spec, attempt)


def sources(app: App, only: tuple[str, ...] = ()) -> list[Source]:
    """Every (stream, concern, partition) of ``app``, limited to subsystems in ``only``."""
    out: list[Source] = []
    for (ref, concern), specs in sorted(app.groups().items(), key=lambda kv: str(kv[0])):
        if only and ref.subsystem not in only:
            continue
        keys = SubsystemKeys(ref.subsystem, app.partitions_of(ref.subsystem))
        by_class = {cls: spec for spec in specs for cls in spec.message_types}
        for part in keys.all():
            out.append(Source(ref, concern, part, keys, by_class, app.types))
    return out


__all__ = ["ATTEMPT_FIELD", "CONCERN_FIELD", "Delivery", "Source", "Verdict", "sources"]
