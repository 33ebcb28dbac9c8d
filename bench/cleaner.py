"""Case 11: server memory per handled operation, without and with the cleaner.

One bot handles N pre-put operations of the case-2 app (each commits one event to a fresh
aggregate). Without the cleaner everything a handled operation leaves stays: its entry, its
handling status and history, its event in the events stream, the latest-by-id index entries,
and its aggregate. With the cleaner (``cleaned`` below: done records kept 0 s, both streams
trimmed at age 0 s) one cycle after the run leaves the aggregates only: the app's own state.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import redis

from bench.apps import Job, Work, Worked
from bench.baseline import wait_for
from bench.framework import EVENTS, _fill, bots
from bench.meter import Meter, empty
from streamcqrs.bots.cleaner import state_key
from streamcqrs.handlers import App, Context

cleaned = App("bench")
"""The case-2 app with retention: nothing of a handled operation kept but its aggregate."""
cleaned.retention("bench/client-ops", keep_done_for=0, max_age=0)
cleaned.retention("bench/events", max_age=0)
cleaned.cleaner(every=3600)  # the bot cleans once at start; the bench runs the next cycle


@cleaned.handler(Work, stream="bench/client-ops", concern="work", appends=["bench"])
async def work(op: Work, ctx: Context) -> None:
    """Commit one event to a fresh aggregate named by the operation's object id."""
    ctx.append(Job(id=ctx.object_id), Worked(t0=op.t0, data=op.data))


def memory(url: str, n: int, data: str, *, clean: bool) -> dict[str, float]:
    """Server memory (B) and keys per handled operation, and the cleaning cycle's seconds."""
    client = redis.Redis.from_url(url)
    empty(client)
    app = "bench.cleaner:cleaned" if clean else "bench.apps:app"
    footprint = Meter(client)
    footprint.start()
    cycle = 0.0
    with bots(url, 1, app=app):
        if clean:  # the bot's first cycle (nothing to clean yet) must not race the events
            wait_for(lambda: client.hexists(state_key("bench"), "finished"), "first cycle", 60)
        _fill(url, n, data)
        wait_for(lambda: client.xlen(EVENTS) >= n, f"{n} committed events", 600)
    if clean:
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "streamcqrs", "clean", app],
            env={**os.environ, "REDIS_URL": url}, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        cycle = time.monotonic() - started
    figures = footprint.stop(n)
    client.close()
    return {"memory_b": figures["memory_b"], "keys": figures["keys"], "cycle_s": cycle}


__all__ = ["cleaned", "memory"]
