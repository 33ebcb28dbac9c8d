"""Case 4: notifications end to end through every bot of the example, senders faked.

One bot process per subsystem (notification, email, slack) runs the example app with
``NOTIFICATION_FAKE_SENDERS=1``, so every email and Slack message succeeds without a network
and the figure is the framework's: client put, notification bot, two sender bots, saga,
terminal event, projections. All notifications are put at once (as fast as one client can);
throughput is terminal events per second from the first put to the last terminal event, and
latency is from each put's acknowledgement to its terminal event's entry time, so under this
burst it includes the time a notification waits behind the ones put before it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import ExitStack

import redis
import redis.asyncio

from bench.framework import bots
from bench.meter import empty
from bench.stats import percentile
from examples.notification.bench_support import FAKE_SENDERS_ENV
from examples.notification.client import send_notification
from streamcqrs.streams import Kind, Subsystem, SubsystemKeys

EVENTS = SubsystemKeys("notification").partition(0).stream(Kind.EVENTS)
TERMINAL = {b"notification.NotificationSent", b"notification.NotificationFailed"}
APP = "examples.notification.app:app"


async def _put_all(url: str, count: int) -> dict[bytes, float]:
    """Put ``count`` notifications to alice (email and Slack); tracking id -> put time (ms)."""
    client = redis.asyncio.Redis.from_url(url)
    notification = Subsystem("notification", client)
    put_at: dict[bytes, float] = {}

    async def one(n: int) -> None:
        tracking_id = await send_notification(notification, "alice", f"bench {n}", "body")
        put_at[tracking_id.encode()] = time.time() * 1000

    for start in range(0, count, 50):  # 50 in flight: within the client's connection pool
        await asyncio.gather(*(one(n) for n in range(start, min(count, start + 50))))
    await client.aclose()
    return put_at


class _Terminals:
    """Reads the notification event stream forward, keeping each terminal event's time."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.cursor = "0-0"
        self.at: dict[bytes, int] = {}

    def poll(self) -> int:
        """Read what is new; return how many notifications have ended so far."""
        while True:
            reply = self.client.xread({EVENTS: self.cursor}, count=5000)
            if not reply:
                return len(self.at)
            for entry_id, fields in reply[0][1]:
                self.cursor = entry_id.decode()
                if fields.get(b"type") in TERMINAL:
                    self.at[fields[b"obj"]] = int(entry_id.split(b"-")[0])


def _wait(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)  # a scan per poll: do not load the server being measured


def end_to_end(url: str, count: int) -> dict[str, float]:
    """Completed notifications/s and p50/p99 (ms) from put to terminal event."""
    client = redis.Redis.from_url(url)
    empty(client)
    terminals = _Terminals(client)
    with ExitStack() as stack:
        for subsystem in ("notification", "email", "slack"):
            only = ("--only", subsystem, "--log-level", "warning")
            stack.enter_context(bots(url, app=APP, args=only, env=FAKE_SENDERS_ENV))
        # Measure running bots, not starting ones: one notification through first.
        asyncio.run(_put_all(url, 1))
        _wait(lambda: terminals.poll() >= 1, "the warm-up notification", 120)
        warm_up = set(terminals.at)
        start = time.time() * 1000
        put_at = asyncio.run(_put_all(url, count))
        _wait(lambda: terminals.poll() >= count + 1, f"{count} terminal events", 600)
    client.close()
    done = {tid: at for tid, at in terminals.at.items() if tid not in warm_up}
    latencies = sorted(done[tid] - at for tid, at in put_at.items())
    return {
        "per_s": count / ((max(done.values()) - start) / 1000),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }
