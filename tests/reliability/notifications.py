"""What the notification chaos tests share: a paced client, and the checks they end with."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import redis

from examples.notification.client import send_notification
from streamcqrs.streams import Kind, Subsystem, SubsystemKeys
from tests.reliability.bots import pending
from tests.support import async_client

TERMINAL = {
    b"notification.NotificationSent",
    b"notification.NotificationFailed",
    b"notification.NotificationSuppressed",
}
SUBSYSTEMS = ("notification", "email", "slack")


def terminal_events(client: redis.Redis, partitions: int = 1) -> Counter[bytes]:
    """Terminal events per notification id, over every partition of notification/events."""
    seen: Counter[bytes] = Counter()
    for part in SubsystemKeys("notification", partitions).all():
        last = "-"
        while True:
            chunk = client.xrange(part.stream(Kind.EVENTS), min=last, count=5000)
            chunk = chunk[1:] if last != "-" else chunk
            if not chunk:
                break
            for _entry_id, fields in chunk:
                if fields.get(b"type") in TERMINAL:
                    seen[fields[b"obj"]] += 1
            last = chunk[-1][0].decode()
    return seen


def drained(client: redis.Redis, partitions: int = 1) -> bool:
    """No consumer group of any example stream has pending entries; every outbox is empty."""
    for subsystem in SUBSYSTEMS:
        for part in SubsystemKeys(subsystem, partitions).all():
            if client.xlen(part.outbox):
                return False
            for kind in Kind:
                key = part.stream(kind)
                if client.exists(key) and pending(client, key):
                    return False
    return True


def send_notifications(
    url: str,
    tracking: list[str],
    errors: list[str],
    *,
    count: int,
    rate: float,
    partitions: int = 1,
) -> None:
    """Send ``count`` notifications at ``rate`` a second (run it in a thread: it has its own
    event loop), noting each tracking id; an error ends it and goes into ``errors``."""

    async def go() -> None:
        notification = Subsystem("notification", async_client(url), partitions=partitions)
        start = time.monotonic()
        for n in range(count):
            recipient = ("alice", "bob", "carol", "dave")[n % 4]
            tracking.append(await send_notification(notification, recipient, f"n{n}", "body"))
            ahead = start + (n + 1) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await notification.client.aclose()

    try:
        asyncio.run(go())
    except Exception as exc:  # reported by the test, which fails on any
        errors.append(repr(exc))


__all__ = ["SUBSYSTEMS", "TERMINAL", "drained", "send_notifications", "terminal_events"]
