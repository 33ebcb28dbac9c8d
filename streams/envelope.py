"""The envelope every stream entry carries, and the codecs between models and entry fields.

An entry's fields (names kept short but readable in ``redis-cli XRANGE``):

=======  ===============================================================
``id``     message id (32 hex chars), unique per message, the dedupe key
``type``   registered type name (``domain.registry``), never the class name
``schema`` schema version of the payload
``obj``    object id the record is about (aggregate id, tracking id), may be empty
``corr``   correlation id: the id of the first message of the conversation
``cause``  causation id: the id of the message that led to this one, may be empty
``at``     created-at, milliseconds since the epoch, set by the writer
``tags``   msgpack list of [name, value] pairs (repeats allowed), may be empty
``fmt``    ``m`` payload is msgpack of the model; ``j`` payload is JSON bytes (views)
``data``   the payload
``seq``    (aggregate events only) the aggregate's version after this event
``trace``  W3C ``traceparent`` of the span that wrote it (absent: untraced)
=======  ===============================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import msgpack
import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from streamcqrs.domain.errors import RegistryError, UnknownMessageType
from streamcqrs.domain.ids import new_message_id
from streamcqrs.domain.messages import Message
from streamcqrs.domain.registry import TypeRegistry, registry
from streamcqrs.streams._ids import now_ms
from streamcqrs.streams.errors import DecodeError, EncodeError

FIELDS = ("id", "type", "schema", "obj", "corr", "cause", "at", "tags", "fmt", "data", "trace")
"""The envelope's fields in the order every entry stores them (commit.lua keeps the same).
The last, ``trace``, is sent and stored only when set."""
Tags = tuple[tuple[str, str], ...]
Entry = tuple[bytes, dict[bytes, bytes]]
"""One stream entry as XRANGE/XREAD return it on a client without decode_responses."""
MSGPACK = b"m"
JSON = b"j"


def as_tags(tags: Iterable[tuple[str, str]] | Mapping[str, str] | None) -> Tags:
    """Normalize tags given as pairs or a mapping into a tuple of (name, value) pairs."""
    if not tags:
        return ()
    pairs = tags.items() if isinstance(tags, Mapping) else tags
    return tuple((str(name), str(value)) for name, value in pairs)


@dataclass(slots=True)
class Envelope:
    """Everything about a message except its decoded payload.

    Treat it as a value: not frozen only because a frozen dataclass costs about a microsecond
    more to make, and a bot makes two per message.
    """

    type: str
    payload: bytes
    schema: int = 1
    object_id: str = ""
    message_id: str = field(default_factory=new_message_id)
    correlation_id: str = ""
    causation_id: str = ""
    created_at: int = field(default_factory=now_ms)
    tags: Tags = ()
    fmt: bytes = MSGPACK
    seq: int | None = None
    trace: str = ""
    """W3C ``traceparent`` of the span that wrote it (``streams.tracing``); empty: untraced."""

    def values(self) -> list[bytes | str | int]:
        """The field values in ``FIELDS`` order (commit.lua names them); ``trace`` only if set."""
        out: list[bytes | str | int] = [
            self.message_id,
            self.type,
            self.schema,
            self.object_id,
            self.correlation_id or self.message_id,
            self.causation_id,
            self.created_at,
            msgpack.packb([list(t) for t in self.tags]) if self.tags else b"",
            self.fmt,
            self.payload,
        ]
        if self.trace:
            out.append(self.trace)
        return out

    def fields(self) -> list[bytes | str | int]:
        """The flat field/value list of the entry, as XADD writes it."""
        values = self.values()
        return [item for pair in zip(FIELDS[: len(values)], values, strict=True) for item in pair]

    def entry(self) -> dict[bytes, bytes]:
        """The fields as a stream entry holds them, as XRANGE returns them."""
        flat = self.fields()
        return {_bytes(flat[k]): _bytes(flat[k + 1]) for k in range(0, len(flat), 2)}


def _bytes(value: bytes | str | int) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


MAX_PAYLOAD_BYTES = 1 << 20
"""Largest message payload (packed) a put accepts and a bot decodes: 1 MiB.

Streams are logs of small facts; a bigger blob belongs in object storage with its key in the
message. Refusing it at the door keeps one oversized entry from stalling a bot's batch, and a
bot dead-letters any larger entry written past this check instead of unpacking it.
"""


def encode(
    message: Message,
    *,
    object_id: str = "",
    tags: Tags = (),
    correlation_id: str = "",
    causation_id: str = "",
    message_id: str | None = None,
    types: TypeRegistry = registry,
    trace: str = "",
) -> Envelope:
    """Wrap a registered message model in an envelope with a msgpack payload."""
    kind = types.of_class(type(message))
    try:
        payload = msgpack.packb(message.__pydantic_serializer__.to_python(message, mode="json"))
    except (OverflowError, TypeError, ValueError) as exc:
        raise EncodeError(
            f"cannot pack {kind.name!r} for storage: {exc}; keep ints within 64 bits"
        ) from exc
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise EncodeError(
            f"{kind.name!r} packs to {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES}-byte "
            "limit; store large content elsewhere and put its key in the message"
        )
    return Envelope(
        type=kind.name,
        schema=kind.version,
        payload=payload,
        object_id=object_id,
        message_id=message_id or new_message_id(),
        correlation_id=correlation_id,
        causation_id=causation_id,
        tags=tags,
        trace=trace,
    )


def _json_default(value: object) -> object:
    """What orjson does not know: exact decimals as strings (money stays exact), sets as
    lists, any pydantic model as its JSON data."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def view_json(view: BaseModel | Mapping[str, Any] | bytes, object_id: str) -> bytes:
    """A view's JSON bytes; EncodeError naming the view and the value that is not JSON."""
    try:
        if isinstance(view, bytes):
            orjson.loads(view)  # stored and served as they are: they must be JSON
            return view
        if isinstance(view, BaseModel):
            return view.__pydantic_serializer__.to_json(view)
        return orjson.dumps(view, default=_json_default)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, PydanticSerializationError) as exc:
        raise EncodeError(f"the view of {object_id!r} is not JSON: {exc}") from None


def encode_view(
    view: BaseModel | Mapping[str, Any] | bytes,
    *,
    type_name: str,
    object_id: str,
    tags: Tags = (),
    correlation_id: str = "",
    causation_id: str = "",
    trace: str = "",
) -> Envelope:
    """Wrap a view (a pydantic model, a mapping, or ready JSON bytes) as the JSON bytes an API
    returns raw (``view_json``)."""
    return Envelope(
        type=type_name,
        payload=view_json(view, object_id),
        object_id=object_id,
        tags=tags,
        fmt=JSON,
        correlation_id=correlation_id,
        causation_id=causation_id,
        trace=trace,
    )


_REQUIRED = (b"id", b"type", b"schema", b"fmt", b"data")


def parse(stream: str, entry_id: str, raw: Mapping[bytes, bytes]) -> Envelope:
    """Read the envelope out of an entry's raw fields; raise DecodeError if it is not one."""
    missing = [name.decode() for name in _REQUIRED if name not in raw]
    if missing:
        raise DecodeError(stream, entry_id, f"missing envelope fields {missing}")
    try:
        tags_raw = raw.get(b"tags", b"")
        tags: Tags = (
            tuple((str(n), str(v)) for n, v in msgpack.unpackb(tags_raw)) if tags_raw else ()
        )
        seq = raw.get(b"seq")
        return Envelope(
            type=raw[b"type"].decode(),
            payload=raw[b"data"],
            schema=int(raw[b"schema"]),
            object_id=raw.get(b"obj", b"").decode(),
            message_id=raw[b"id"].decode(),
            correlation_id=raw.get(b"corr", b"").decode(),
            causation_id=raw.get(b"cause", b"").decode(),
            created_at=int(raw.get(b"at", b"0")),
            tags=tags,
            fmt=raw[b"fmt"],
            seq=int(seq) if seq is not None else None,
            trace=raw.get(b"trace", b"").decode(),
        )
    except (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as exc:
        raise DecodeError(stream, entry_id, f"malformed envelope: {exc}") from exc


def decode(
    stream: str, entry_id: str, envelope: Envelope, types: TypeRegistry = registry
) -> Message:
    """Turn an envelope's payload back into its model, upcasting old schema versions."""
    try:
        kind = types.of_name(envelope.type)
    except UnknownMessageType as exc:
        raise DecodeError(stream, entry_id, str(exc)) from exc
    if envelope.fmt not in (MSGPACK, JSON):
        raise DecodeError(stream, entry_id, f"unknown payload format {envelope.fmt!r}")
    if len(envelope.payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError(
            stream,
            entry_id,
            f"payload of {len(envelope.payload)} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit",
        )
    try:
        data = (
            msgpack.unpackb(envelope.payload)
            if envelope.fmt == MSGPACK
            else orjson.loads(envelope.payload)
        )
    # Arbitrary bytes can fail msgpack in many ways (bad format, unhashable or non-str map
    # keys, bad UTF-8); each is just "not a payload".
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        reason = f"payload is not valid {envelope.fmt!r}: {exc}"
        raise DecodeError(stream, entry_id, reason) from exc
    if not isinstance(data, dict):
        raise DecodeError(stream, entry_id, f"payload is a {type(data).__name__}, not a map")
    try:
        if envelope.schema != kind.version:
            data = types.upcast(envelope.type, envelope.schema, data)
        return kind.cls.model_validate(data)
    except RegistryError as exc:
        raise DecodeError(stream, entry_id, str(exc)) from exc
    except ValidationError as exc:
        raise DecodeError(
            stream, entry_id, f"payload does not fit {kind.name!r}: {exc.errors()!r}"
        ) from exc


@dataclass(frozen=True, slots=True)
class Record:
    """One stored entry: where it is, its envelope, and (unless a view) its message."""

    stream: str
    entry_id: str
    envelope: Envelope
    message: Message | None = None

    @property
    def object_id(self) -> str:
        """The id of the object this record is about."""
        return self.envelope.object_id

    @property
    def created_at(self) -> int:
        """When the writer made it, in epoch milliseconds."""
        return self.envelope.created_at

    @property
    def raw(self) -> bytes:
        """The stored payload bytes, as they are (a view's JSON, served without re-encoding)."""
        return self.envelope.payload


def to_record(
    stream: str, entry_id: bytes | str, raw: Mapping[bytes, bytes], types: TypeRegistry = registry
) -> Record:
    """Parse and decode one XRANGE/XREAD entry into a Record (views stay undecoded)."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    envelope = parse(stream, eid, raw)
    message = None if envelope.fmt == JSON else decode(stream, eid, envelope, types)
    return Record(stream, eid, envelope, message)


def pairs(flat: Sequence[Any]) -> dict[bytes, bytes]:
    """Turn a flat [field, value, ...] reply (as Lua returns) into a dict."""
    return {flat[k]: flat[k + 1] for k in range(0, len(flat) - 1, 2)}


def as_str(value: bytes | str) -> str:
    """Text of a reply value that comes back as bytes (or str on a decoding client)."""
    return value.decode() if isinstance(value, bytes) else value


def entries(reply: object) -> list[Entry]:
    """Narrow an XRANGE/XREVRANGE reply to its known shape: [(entry_id, {field: value})].

    redis-py types these replies loosely (every element optional); the server's reply to
    these commands on a non-decoding client always has this shape, or is empty.
    """
    return cast(list[Entry], reply or [])


def script_entry(found: Sequence[Any]) -> Entry:
    """Narrow a Lua script's ``{entry_id, {field, value, ...}}`` reply into an Entry."""
    entry_id, flat = found
    return cast(bytes, entry_id), pairs(flat)
