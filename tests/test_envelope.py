"""The envelope: every field survives a trip through a stream, and junk is reported exactly.

An entry that cannot be turned back into a message must raise DecodeError naming the stream
and the entry id (so a bot can dead-letter it and an operator can find it), never another
exception.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from streamcqrs.domain import TypeRegistry
from streamcqrs.streams import Commit, Envelope, Kind
from streamcqrs.streams.envelope import (
    JSON,
    MAX_PAYLOAD_BYTES,
    decode,
    encode,
    entries,
    pairs,
    parse,
    to_record,
    view_json,
)
from streamcqrs.streams.errors import DecodeError, EncodeError
from tests.messages import Ping
from tests.support import Backend, Run

STREAM = "{env.0}:client-ops"


def _full_envelope() -> Envelope:
    return encode(
        Ping(n=7, text="héllo"),
        object_id="order-1",
        tags=(("to", "a@example.com"), ("to", "b@example.com"), ("cc", "c@example.com")),
        correlation_id="c" * 32,
        causation_id="d" * 32,
        message_id="e" * 32,
    )


def test_encode_then_parse_gives_back_every_field() -> None:
    """fields() and parse() are inverse: every envelope field, repeated tags in order."""
    envelope = _full_envelope()
    flat = envelope.fields()
    raw = {
        str(k).encode(): v if isinstance(v, bytes) else str(v).encode()
        for k, v in pairs(flat).items()
    }

    parsed = parse(STREAM, "1-0", raw)

    assert envelope == parsed
    assert Ping(n=7, text="héllo") == decode(STREAM, "1-0", parsed)


def test_an_envelope_without_correlation_starts_a_conversation() -> None:
    """A message with no correlation id is the first of its conversation: corr = its own id."""
    envelope = encode(Ping(n=1), message_id="f" * 32)
    raw = {str(k).encode(): str(v).encode() if not isinstance(v, bytes) else v
           for k, v in pairs(envelope.fields()).items()}  # fmt: skip

    assert "f" * 32 == parse(STREAM, "1-0", raw).correlation_id


def test_every_field_round_trips_through_a_stream(backend: Backend, run: Run[Any]) -> None:
    """An envelope written to a stream reads back equal, field for field, with its message."""
    sub = backend.subsystem("env")
    part = sub.keys.partition(0)
    envelope = _full_envelope()

    async def scenario() -> tuple[list[Any], Any]:
        commit = Commit()
        commit.put_at(part, Kind.CLIENT_OPERATIONS, envelope)
        await commit.run(sub.client)
        return await sub.reader("client-ops").read(), await sub.reader("client-ops").latest(
            "order-1"
        )

    records, latest = run(scenario())

    assert 1 == len(records)
    record = records[0]
    assert envelope == record.envelope
    assert Ping(n=7, text="héllo") == record.message
    assert "order-1" == record.object_id
    assert envelope.created_at == record.created_at
    assert part.stream(Kind.CLIENT_OPERATIONS) == record.stream
    assert record == latest


def _valid_fields(**override: Any) -> dict[str, Any]:
    fields = pairs(encode(Ping(n=1), object_id="junk").fields())
    fields = {str(k): v for k, v in fields.items()}
    fields.update(override)
    return {k: v for k, v in fields.items() if v is not None}


def _random_bytes() -> bytes:
    # Fixed seed: the same junk every run. 0xc1 is a byte msgpack never uses, so however the
    # rest falls out, this cannot decode by chance.
    return b"\xc1" + random.Random(20240601).randbytes(63)


JUNK = {
    "random-bytes": (_valid_fields(data=_random_bytes()), "payload is not valid"),
    "missing-fields": ({"hello": "world", "obj": "junk"}, "missing envelope fields"),
    "unknown-type": (_valid_fields(type="test.NoSuchType"), "test.NoSuchType"),
    "fails-validation": (
        _valid_fields(data=msgpack.packb({"n": "not a number"})),
        "does not fit 'test.Ping'",
    ),
    "not-a-map": (_valid_fields(data=msgpack.packb([1, 2, 3])), "not a map"),
    "bad-schema": (_valid_fields(schema="one"), "malformed envelope"),
    "bad-tags": (_valid_fields(tags=b"\xc1"), "malformed envelope"),
    "unknown-format": (_valid_fields(fmt="x"), "unknown payload format"),
}


@pytest.mark.parametrize("case", sorted(JUNK))
def test_an_undecodable_entry_raises_decode_error_naming_stream_and_entry(
    backend: Backend, run: Run[Any], case: str
) -> None:
    """Junk written with a raw XADD raises DecodeError (stream + entry id) from read and latest."""
    fields, reason = JUNK[case]
    sub = backend.subsystem("env")
    part = sub.keys.partition(0)
    key = part.stream(Kind.CLIENT_OPERATIONS)
    reader = sub.reader("client-ops")

    async def scenario() -> tuple[str, DecodeError, DecodeError]:
        entry_id = (await sub.client.xadd(key, fields)).decode()
        # Point the latest-by-id index at it, as a put would have.
        await sub.client.hset(part.index(Kind.CLIENT_OPERATIONS), "junk", entry_id)
        with pytest.raises(DecodeError) as from_read:
            await reader.read()
        with pytest.raises(DecodeError) as from_latest:
            await reader.latest("junk")
        return entry_id, from_read.value, from_latest.value

    entry_id, from_read, from_latest = run(scenario())

    for error in (from_read, from_latest):
        assert (key, entry_id) == (error.stream, error.entry_id)
        assert key in str(error)
        assert entry_id in str(error)
        assert reason in str(error)


def test_a_view_entry_is_not_decoded_and_keeps_its_bytes() -> None:
    """A JSON view record keeps its payload bytes as stored and carries no message."""
    raw = {b"id": b"a" * 32, b"type": b"view", b"schema": b"1", b"fmt": JSON,
           b"data": b'{"b":1,"a":[2]}', b"obj": b"v1"}  # fmt: skip

    record = to_record(STREAM, b"5-1", raw)

    assert (None, b'{"b":1,"a":[2]}', "5-1") == (record.message, record.raw, record.entry_id)


def test_decode_uses_the_registry_it_is_given() -> None:
    """A registry passed to decode is the one consulted: an empty one knows no types."""
    envelope = encode(Ping(n=3))

    with pytest.raises(DecodeError, match=r"no message type is registered under 'test\.Ping'"):
        decode(STREAM, "9-0", envelope, TypeRegistry())


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=64))
def test_any_payload_bytes_decode_or_raise_decode_error(payload: bytes) -> None:
    """Whatever bytes a payload holds, decode returns a message or raises DecodeError."""
    envelope = Envelope(type="test.Ping", payload=payload)
    try:
        decoded = decode(STREAM, "1-0", envelope)
    except DecodeError as exc:
        assert "1-0" in str(exc)
    else:
        assert isinstance(decoded, Ping)


_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can hold
_SCALARS = st.none() | st.booleans() | _INTS | st.text(max_size=5) | st.binary(max_size=5)
_KEYS = st.none() | _INTS | st.text(max_size=3) | st.binary(max_size=3)


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Lists and maps of ``inner``: what ``_VALUES`` nests (a named function: hypothesis
    cannot see the argument used in a lambda spread over lines, and warns)."""
    return st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3)


_VALUES = st.recursive(_SCALARS, _nested, max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(data=_VALUES | st.dictionaries(st.sampled_from(["n", "text", "x"]) | _KEYS, _VALUES))
def test_any_msgpack_structure_decodes_or_raises_decode_error(data: Any) -> None:
    """Well-formed msgpack of any shape (lists, odd keys, wrong values) raises DecodeError only."""
    envelope = Envelope(type="test.Ping", payload=msgpack.packb(data))
    try:
        decoded = decode(STREAM, "1-0", envelope)
    except DecodeError as exc:
        assert "1-0" in str(exc)
    else:
        assert isinstance(decoded, Ping)


def test_entries_narrows_an_empty_reply_to_an_empty_list() -> None:
    """A missing stream's reply (None or []) narrows to no entries."""
    assert [] == entries(None)
    assert [] == entries([])


def test_a_message_msgpack_cannot_hold_raises_encode_error() -> None:
    """An int beyond 64 bits cannot be stored: encode says so with EncodeError."""
    with pytest.raises(EncodeError, match=r"cannot pack 'test\.Ping'"):
        encode(Ping(n=2**70))


def test_a_payload_over_the_size_limit_is_refused_on_put_and_on_read() -> None:
    """Over MAX_PAYLOAD_BYTES: encode refuses it, and decode reports it without unpacking."""
    with pytest.raises(EncodeError, match="limit"):
        encode(Ping(n=1, text="x" * (MAX_PAYLOAD_BYTES + 1)))
    fits = encode(Ping(n=1, text="x" * (MAX_PAYLOAD_BYTES - 64)))
    assert Ping(n=1, text="x" * (MAX_PAYLOAD_BYTES - 64)) == decode(STREAM, "1-0", fits)

    huge = Envelope(type="test.Ping", payload=b"\x00" * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(DecodeError, match=r"1-0.*over the 1048576-byte limit"):
        decode(STREAM, "1-0", huge)


class PriceView(BaseModel):
    """A plain pydantic model (not a registered message) used as a view."""

    sku: str
    price: Decimal


def test_views_take_plain_models_decimals_and_sets_and_refuse_what_is_not_json() -> None:
    """A view may be any pydantic model, and a mapping may hold exact decimals (as strings)
    and sets; bytes are stored as they are only if they are JSON; anything else is an
    EncodeError naming the view (first-hour review, F19)."""
    assert {"sku": "A-1", "price": "9.95"} == orjson.loads(
        view_json(PriceView(sku="A-1", price=Decimal("9.95")), "o1"))
    mapped = orjson.loads(view_json({"total": Decimal("0.10"), "tags": {"x"},
                                     "line": PriceView(sku="B", price=Decimal(1))}, "o2"))
    assert {"total": "0.10", "tags": ["x"], "line": {"sku": "B", "price": "1"}} == mapped
    assert b'{"a":1}' == view_json(b'{"a":1}', "o3")
    with pytest.raises(EncodeError, match="the view of 'o4' is not JSON"):
        view_json(b"{not json", "o4")
    with pytest.raises(EncodeError, match=r"the view of 'o5' is not JSON.*object"):
        view_json({"when": object()}, "o5")
