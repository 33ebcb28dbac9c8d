"""Percentiles and throughput from raw measurements."""

from __future__ import annotations


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def ms_of(entry_id: bytes | str) -> int:
    """The millisecond part of a stream entry id."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def rate(count: int, first_ms: int, last_ms: int) -> float:
    """Messages per second between the first and last commit (server clock)."""
    span = max(last_ms - first_ms, 1) / 1000
    return count / span
