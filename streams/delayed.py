"""How a put with ``execute_earliest`` is parked until it is due.

The envelope and its put options are packed into one msgpack member of the partition's
delayed sorted set, scored by the due time in ms. A mover (the bot runtime) takes due members
and puts them into the stream (``Commit.move_due``): the take fails if another mover took the
member first, so a member is moved exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from streamcqrs.streams.envelope import Envelope


@dataclass(frozen=True, slots=True)
class Delayed:
    """A parked put: what to write, into which stream kind, with which strategy."""

    kind: str
    envelope: Envelope
    on_existing: str = "write"
    """An ``OnExisting`` value (kept as text: this codec sits below the commit module)."""
    keep: int = 1
    attempt: int = 0
    """A retry's attempt number (0: not a retry); the mover writes it beside the envelope."""
    concern: str = ""
    """The one concern a retry is for (empty: every consumer of the stream)."""
    policy: bytes = b""
    """The entry's packed execution policy (empty: none)."""

    def pack(self) -> bytes:
        """Encode as a delayed-set member."""
        e = self.envelope
        fields = [
            self.kind, e.type, e.payload, e.schema, e.object_id, e.message_id,
            e.correlation_id, e.causation_id, e.created_at, [list(t) for t in e.tags],
            e.fmt, str(self.on_existing), self.keep,
        ]  # fmt: skip
        seq = e.seq is not None
        if self.attempt or self.concern or self.policy or e.trace or seq:
            fields += [self.attempt, self.concern]
        if self.policy or e.trace or seq:
            fields.append(self.policy)
        if e.trace or seq:
            fields.append(e.trace)  # the envelope's trace context
        if seq:
            fields.append(e.seq)  # last: an aggregate event's version, kept by a retried copy
        return msgpack.packb(fields)

    @classmethod
    def unpack(cls, member: bytes) -> Delayed:
        """Decode a delayed-set member."""
        fields = msgpack.unpackb(member)
        (kind, type_, payload, schema, obj, mid, corr, cause, at, tags, fmt, on_existing, keep) = (
            fields[:13]
        )
        attempt, concern = fields[13:15] if len(fields) >= 15 else (0, "")
        policy = fields[15] if len(fields) >= 16 else b""
        envelope = Envelope(
            type=type_, payload=payload, schema=schema, object_id=obj, message_id=mid,
            correlation_id=corr, causation_id=cause, created_at=at,
            tags=tuple((n, v) for n, v in tags), fmt=fmt,
            trace=fields[16] if len(fields) > 16 else "",
            seq=int(fields[17]) if len(fields) > 17 else None,
        )  # fmt: skip
        return cls(kind, envelope, str(on_existing), keep, attempt, concern, bytes(policy))
