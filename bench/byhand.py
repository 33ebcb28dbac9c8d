"""Case 8: case 2's work written by hand, with the same guarantees, beside the framework.

One process reads 256 operations at a time with XREADGROUP, decodes and validates each
(msgpack, pydantic), makes its event (pydantic, msgpack), then sends ONE script call per batch
that, per operation, checks the consumer still owns the entry (XPENDING), checks the aggregate
is new, appends the event to the events stream (with its latest-by-id index) and to the
aggregate's list, sets the record's handling status with its history entry, and acks. It is
what the framework does for case 2 with nothing of the framework around it: no handler
registry, context, commit object, retries, dead letters, logging or asyncio. The ratio of the
framework to this loop is the cost of the framework itself.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import msgpack
import redis

from bench.apps import Work, Worked
from bench.meter import empty
from bench.stats import ms_of, rate
from streamcqrs.streams import Kind, SubsystemKeys

PART = SubsystemKeys("bench").partition(0)
OPS, EVENTS = PART.stream(Kind.CLIENT_OPERATIONS), PART.stream(Kind.EVENTS)
GROUP = "byhand"

# Per operation in ARGV: entry id, aggregate key, status field, status value, then the 11
# event field values; KEYS: ops stream, events stream, events index, status hash.
SCRIPT = """
local n = 0
local i = 2
local consumer = ARGV[1]
while i <= #ARGV do
  local id, agg, record, status = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local mid, obj = ARGV[i + 4], ARGV[i + 7]
  local found = redis.call('XPENDING', KEYS[1], 'byhand', id, id, 1, consumer)
  if #found == 1 and redis.call('LLEN', agg) == 0 then
    local eid = redis.call('XADD', KEYS[2], '*', 'id', mid, 'type', ARGV[i + 5],
      'schema', ARGV[i + 6], 'obj', obj, 'corr', ARGV[i + 8], 'cause', ARGV[i + 9],
      'at', ARGV[i + 10], 'tags', '', 'fmt', 'm', 'data', ARGV[i + 11], 'seq', '1')
    redis.call('HSET', KEYS[3], obj, eid)
    redis.call('RPUSH', agg, ARGV[i + 11])
    redis.call('HSET', KEYS[4], record, status)
    redis.call('XACK', KEYS[1], 'byhand', id)
    n = n + 1
  end
  i = i + 12
end
return n
"""


def consume(url: str, total: int, deadline_s: float) -> None:
    """The hand-written consumer (its own process, like a bot)."""
    client = redis.Redis.from_url(url)
    sha = client.script_load(SCRIPT)
    status = PART.handling_status(Kind.CLIENT_OPERATIONS, GROUP)
    keys = [OPS, EVENTS, PART.index(Kind.EVENTS), status]
    done = 0
    stop = time.monotonic() + deadline_s
    while done < total and time.monotonic() < stop:
        reply: Any = client.xreadgroup(GROUP, "c1", {OPS: ">"}, count=256, block=100)
        if not reply:
            continue
        args: list[Any] = ["c1"]
        for entry_id, fields in reply[0][1]:
            op = Work.model_validate(msgpack.unpackb(fields[b"data"]))
            event = Worked(t0=op.t0, data=op.data)
            payload = msgpack.packb(event.model_dump(mode="json"))
            obj = fields[b"obj"]
            mid = fields[b"id"]
            now = int(time.time() * 1000)
            history = msgpack.packb([now, "Completed", "complete", "", [], "c1"])
            args += [
                entry_id, PART.aggregate(obj.decode()), mid, b"Completed|" + history,
                mid + b"e", "bench.Worked", 1, obj, fields[b"corr"], mid,
                int(time.time() * 1000), payload,
            ]  # fmt: skip
        done += int(client.evalsha(sha, len(keys), *keys, *args))
    client.close()


def throughput(url: str, n: int, data: str) -> float:
    """Operations/s of the hand-written loop over ``n`` fresh operations (put by ``_fill``)."""
    from bench.framework import _fill

    client = redis.Redis.from_url(url)
    empty(client)
    _fill(url, n, data)
    client.xgroup_create(OPS, GROUP, id="0")
    proc = multiprocessing.get_context("spawn").Process(
        target=consume, args=(url, n, 120), daemon=True
    )
    proc.start()
    proc.join(130)
    first, last = client.xrange(EVENTS, count=1), client.xrevrange(EVENTS, count=1)
    made = client.xlen(EVENTS)
    client.close()
    if made != n:
        raise RuntimeError(f"the hand-written loop committed {made} of {n}")
    return rate(n, ms_of(first[0][0]), ms_of(last[0][0]))
