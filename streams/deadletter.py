"""Dead letters: what a bot could not handle, kept with why and with the original bytes.

An entry lands in its subsystem's dead-letter stream (``Kind.DEAD_LETTERS``) when it cannot
be decoded, names an unknown type or fails validation (bad input), or when its handler failed
every allowed attempt. The bot writes the dead letter in the same commit that acks the
original entry, so the entry is never lost and never dead-lettered twice.

Each dead letter is an ordinary envelope (type ``streamcqrs.DeadLetter``, object id = the
original message id, or its entry id when the entry had none) whose msgpack payload keeps the
original fields as raw bytes: ``read_dead_letters`` lists them, and an operator can put the
original back once the cause is fixed.
"""

from __future__ import annotations

import traceback as tb
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import redis
import redis.asyncio
from pydantic import ValidationError

from streamcqrs.domain.messages import Message
from streamcqrs.domain.registry import message
from streamcqrs.streams._ids import now_ms
from streamcqrs.streams.envelope import Envelope, as_str, entries, parse
from streamcqrs.streams.errors import DecodeError
from streamcqrs.streams.keys import Kind, SubsystemKeys

TYPE_NAME = "streamcqrs.DeadLetter"
KIND = Kind.DEAD_LETTERS
MAX_TRACEBACK = 8_000
"""Characters of traceback kept: enough to find the line, not a megabyte per failure."""


@message(TYPE_NAME)
class DeadLetter(Message):
    """Why an entry could not be handled, how often it was tried, and the entry itself."""

    reason: str
    error_type: str
    traceback: str = ""
    attempts: int = 0
    stream: str
    entry_id: str
    message_id: str = ""
    type_name: str = ""
    concern: str = ""
    fields: tuple[tuple[bytes, bytes], ...] = ()
    at: int = 0

    @property
    def raw(self) -> dict[bytes, bytes]:
        """The original entry's fields, as XRANGE returned them."""
        return dict(self.fields)

    @property
    def entry_key(self) -> str:
        """``stream@entry_id``: names the original entry across every concern reading it."""
        return f"{self.stream}@{self.entry_id}"

    def envelope(self, *, object_id: str = "") -> Envelope:
        """The dead letter as an entry of the dead-letter stream (object id: the message's).

        Packed in msgpack's python mode, not JSON mode, so the original bytes stay bytes.
        """
        return Envelope(
            type=TYPE_NAME,
            payload=msgpack.packb(self.model_dump()),
            object_id=object_id or self.message_id or self.entry_id,
            tags=(("concern", self.concern), ("error", self.error_type)) if self.concern else (),
        )


def dead_letter(
    *,
    reason: str,
    stream: str,
    entry_id: str,
    raw: Mapping[bytes, bytes],
    concern: str = "",
    error: BaseException | None = None,
    attempts: int = 0,
) -> DeadLetter:
    """A dead letter for the entry ``entry_id`` of ``stream`` with raw fields ``raw``."""
    trace = ""
    if error is not None:
        trace = "".join(tb.format_exception(error))[-MAX_TRACEBACK:]
    message_id = raw.get(b"id", b"")
    type_name = raw.get(b"type", b"")
    return DeadLetter(
        reason=reason,
        error_type=type(error).__name__ if error is not None else "DecodeError",
        traceback=trace,
        attempts=attempts,
        stream=stream,
        entry_id=entry_id,
        message_id=message_id.decode(errors="replace") if isinstance(message_id, bytes) else "",
        type_name=type_name.decode(errors="replace") if isinstance(type_name, bytes) else "",
        concern=concern,
        fields=tuple((bytes(k), bytes(v)) for k, v in raw.items()),
        at=now_ms(),
    )


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter as read back: where it is stored, and what it says."""

    key: str
    entry_id: str
    letter: DeadLetter


def decode_dead_letter(key: str, entry_id: str, raw: Mapping[bytes, bytes]) -> StoredDeadLetter:
    """Decode one dead-letter stream entry; raise DecodeError if it is not a dead letter."""
    envelope = parse(key, entry_id, raw)
    if envelope.type != TYPE_NAME:
        raise DecodeError(key, entry_id, f"type {envelope.type!r} is not {TYPE_NAME!r}")
    try:
        data: Any = msgpack.unpackb(envelope.payload)
        return StoredDeadLetter(key, entry_id, DeadLetter.model_validate(data))
    except (ValueError, TypeError, msgpack.UnpackException, ValidationError) as exc:
        raise DecodeError(key, entry_id, f"not a dead letter: {exc}") from exc


def _decode_all(key: str, found: Sequence[Any]) -> list[StoredDeadLetter]:
    return [decode_dead_letter(key, as_str(eid), raw) for eid, raw in found]


async def read_dead_letters(
    client: redis.asyncio.Redis, keys: SubsystemKeys, *, count: int | None = None
) -> list[StoredDeadLetter]:
    """Every partition's dead letters of a subsystem, oldest first per partition."""
    out: list[StoredDeadLetter] = []
    for part in keys.all():
        key = part.stream(KIND)
        out += _decode_all(key, entries(await client.xrange(key, count=count)))
    return out


def read_dead_letters_sync(
    client: redis.Redis, keys: SubsystemKeys, *, count: int | None = None
) -> list[StoredDeadLetter]:
    """``read_dead_letters`` on a sync client (CLIs, tests)."""
    out: list[StoredDeadLetter] = []
    for part in keys.all():
        key = part.stream(KIND)
        out += _decode_all(key, entries(client.xrange(key, count=count)))
    return out


__all__ = [
    "DeadLetter",
    "StoredDeadLetter",
    "dead_letter",
    "decode_dead_letter",
    "read_dead_letters",
    "read_dead_letters_sync",
]
