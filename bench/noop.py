"""Case 9: a handler that does nothing, so a bot's own cost per entry shows alone.

Its commit is the record's handling status and the ack of its input; the baseline beside it
is a raw XREADGROUP + XACK loop (``baseline.ack_throughput``). Both are timed from the first
entry handled to the last.
"""

from __future__ import annotations

import time

import redis

from bench.framework import _fill, bots
from bench.meter import Meter, empty, process_cpu
from streamcqrs.streams import Kind, SubsystemKeys

STATUS = SubsystemKeys("bench").partition(0).handling_status(Kind.CLIENT_OPERATIONS, "noop")


def throughput(url: str, n: int, data: str) -> dict[str, float]:
    """Entries/s a bot settles with a no-op handler, and its CPU and commands per entry."""
    client = redis.Redis.from_url(url)
    empty(client)
    _fill(url, n, data)
    meter = Meter(client)
    with bots(url, 1, app="bench.apps:noop") as proc:
        deadline = time.monotonic() + 240
        while client.hlen(STATUS) < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        started, done_at = time.monotonic(), 0.0
        meter.start()
        cpu = process_cpu(proc.pid)
        first = client.hlen(STATUS)
        while time.monotonic() < deadline:
            if client.hlen(STATUS) >= n:
                done_at = time.monotonic()
                break
            time.sleep(0.01)
        spent = process_cpu(proc.pid) - cpu
        costs = meter.stop(n - first, client_cpu=spent)
    client.close()
    if not done_at:
        raise RuntimeError(f"the no-op bot settled fewer than {n} entries in time")
    return {"per_s": (n - first) / max(done_at - started, 1e-6), **costs}
