"""Hypothesis strategies for junk stream entries: what a broken producer could write.

Each strategy yields ``(category, fields)`` where ``fields`` is the raw field map to XADD.
None of them is a valid operation for the chaos app, so a bot must dead-letter every one.
"""

from __future__ import annotations

import msgpack
from hypothesis import strategies as st

from streamcqrs.streams.envelope import MAX_PAYLOAD_BYTES, encode, pairs
from tests.reliability.apps import Do

Fields = dict[bytes, bytes]
Junk = tuple[str, Fields]

_REQUIRED = (b"id", b"type", b"schema", b"fmt", b"data")


def valid_fields(n: int) -> Fields:
    """The raw fields of a valid ``chaos.Do`` operation number ``n``."""
    envelope = encode(Do(n=n), object_id=str(n))
    return {
        str(k).encode(): v if isinstance(v, bytes) else str(v).encode()
        for k, v in pairs(envelope.fields()).items()
    }


def _with(**changes: bytes) -> Fields:
    fields = valid_fields(0)
    fields.update({k.encode(): v for k, v in changes.items()})
    return fields


_bytes = st.binary(min_size=0, max_size=64)
_int64 = st.integers(-(2**63), 2**63 - 1)

random_fields: st.SearchStrategy[Junk] = st.dictionaries(
    _bytes.filter(lambda b: b not in _REQUIRED), _bytes, min_size=1, max_size=6
).map(lambda d: ("random bytes", d))

truncated_msgpack: st.SearchStrategy[Junk] = st.integers(min_value=1, max_value=8).map(
    lambda cut: ("truncated msgpack", _with(data=msgpack.packb({"n": 1, "pad": "x" * 20})[:-cut]))
)

wrong_field_types: st.SearchStrategy[Junk] = st.one_of(
    st.sampled_from([b"abc", b"", b"1.5", b"-"]).map(lambda v: ("bad schema", _with(schema=v))),
    st.sampled_from([b"x", b"yesterday", b"1e5", b"\xff"]).map(lambda v: ("bad at", _with(at=v))),
    _bytes.filter(lambda b: b != b"").map(lambda v: ("bad tags", _with(tags=b"\xc1" + v))),
    st.sampled_from([b"x", b"zz", b""]).map(lambda v: ("bad fmt", _with(fmt=v))),
)

unknown_type: st.SearchStrategy[Junk] = st.text(min_size=1, max_size=30).filter(
    lambda t: t not in {"chaos.Do", "chaos.Done", "chaos.Note"}
).map(lambda t: ("unknown type", _with(type=t.encode())))

missing_fields: st.SearchStrategy[Junk] = st.sets(
    st.sampled_from(_REQUIRED), min_size=1
).map(lambda drop: ("missing fields", {k: v for k, v in valid_fields(0).items() if k not in drop}))

invalid_payload: st.SearchStrategy[Junk] = st.one_of(
    st.just({"n": "not a number"}),
    st.just({}),
    st.just({"n": 1, "extra": True}),
    st.dictionaries(st.text(max_size=5), _int64, max_size=3).filter(lambda d: "n" not in d),
    _int64.map(lambda i: [i]),
).map(lambda payload: ("invalid payload", _with(data=msgpack.packb(payload))))

def huge_payload() -> Junk:
    """A Do operation whose payload is over the size limit (a megabyte, so made on demand)."""
    pad = "x" * (MAX_PAYLOAD_BYTES + 10)
    return "huge payload", _with(data=msgpack.packb({"n": 1, "pad": pad}))


junk: st.SearchStrategy[Junk] = st.one_of(
    random_fields,
    truncated_msgpack,
    wrong_field_types,
    unknown_type,
    missing_fields,
    invalid_payload,
)
"""Every kind of junk but the huge payloads, which the fuzz test mixes in at a fixed rate (a
megabyte each, so a few dozen say what is needed without filling the server's memory)."""
