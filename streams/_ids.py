"""Time and stream entry ids: the units every module of the streams layer shares."""

from __future__ import annotations

import time
from datetime import datetime

MAX_ID = 18446744073709551615
"""The largest part of a stream entry id (an unsigned 64-bit integer)."""


def now_ms() -> int:
    """Milliseconds since the epoch, the unit of stream ids and of an envelope's ``at``."""
    return time.time_ns() // 1_000_000


def to_ms(moment: datetime | int | None, default: int) -> int:
    """A datetime or epoch-ms int as epoch ms; ``default`` when None."""
    if moment is None:
        return default
    if isinstance(moment, datetime):
        return int(moment.timestamp() * 1000)
    return int(moment)


def entry_key(entry_id: bytes | str) -> tuple[int, int]:
    """An entry id as (ms, seq) numbers, so ids order as the stream does ("5-10" after "5-9")."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
