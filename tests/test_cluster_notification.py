"""The notification example on a real 3-shard cluster, 4 partitions per subsystem, a bot killed.

Three bot processes run the example (senders faked: only the framework and the saga are under
test) with 4 partitions of each of notification, email and Slack, so a notification's
operations, its saga, its outcomes and its aggregate sit in different slots, on different
primaries, and most of what a handler emits goes through an outbox and a relay. A client
sends 1,000 notifications; mid-run one bot is SIGKILLed (its relay leases lapse and the
others take its partitions and its pending entries over). Every notification must end with
exactly one terminal event, nothing may stay pending, and every outbox must empty.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from examples.notification.bench_support import FAKE_SENDERS_ENV
from examples.notification.client import send_notification
from streamcqrs.streams import Kind, Subsystem, SubsystemKeys
from tests.clusterapps import PARTITIONS
from tests.reliability.bots import BotProcess, pending, stop_all, wait_until
from tests.support import async_client, sync_client

pytestmark = pytest.mark.cluster

NOTIFICATIONS = 1000
RATE = 100.0
"""Notifications sent per second."""
TERMINAL = {
    b"notification.NotificationSent",
    b"notification.NotificationFailed",
    b"notification.NotificationSuppressed",
}
SUBSYSTEMS = {name: SubsystemKeys(name, PARTITIONS) for name in ("notification", "email", "slack")}


def terminal_events(client: redis.Redis) -> Counter[bytes]:
    """Terminal events per notification id, over every partition of notification/events."""
    seen: Counter[bytes] = Counter()
    for part in SUBSYSTEMS["notification"].all():
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


def settled(client: redis.Redis) -> bool:
    """No group of any partition has pending entries, and every outbox is empty."""
    for keys in SUBSYSTEMS.values():
        for part in keys.all():
            if client.xlen(part.outbox):
                return False
            for kind in Kind:
                key = part.stream(kind)
                if client.exists(key) and pending(client, key):
                    return False
    return True


def send_all(url: str, tracking: list[str], errors: list[str]) -> None:
    """Send NOTIFICATIONS at RATE from a thread of its own (its own event loop)."""

    async def go() -> None:
        notification = Subsystem("notification", async_client(url), partitions=PARTITIONS)
        start = time.monotonic()
        for n in range(NOTIFICATIONS):
            recipient = ("alice", "bob", "carol", "dave")[n % 4]
            tracking.append(await send_notification(notification, recipient, f"n{n}", "body"))
            ahead = start + (n + 1) / RATE - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await notification.client.aclose()

    try:
        asyncio.run(go())
    except Exception as exc:  # reported by the test, which fails on any
        errors.append(repr(exc))


@pytest.mark.timeout(300)
def test_every_notification_ends_exactly_once_on_a_cluster_while_a_bot_is_killed(
    cluster_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 notifications over 4 partitions per subsystem on 3 shards, one of 3 bots
    SIGKILLed mid-run: exactly one terminal event each, nothing pending, outboxes empty."""
    for name, value in FAKE_SENDERS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NOTIFICATION_DEADLINE", "120")
    log = tmp_path / "bots.log"
    bots = [
        BotProcess("tests.clusterapps:notification", cluster_url, "--visibility-timeout", "1",
                   "--block-ms", "100", "--mover-interval", "0.05", "--log-level", "info",
                   log=log).start()
        for _ in range(3)
    ]  # fmt: skip
    client = sync_client(cluster_url)
    tracking: list[str] = []
    errors: list[str] = []
    sender = threading.Thread(target=send_all, args=(cluster_url, tracking, errors), daemon=True)
    started = time.monotonic()
    try:
        for bot in bots:
            bot.wait_ready()
        sender.start()
        wait_until(lambda: len(terminal_events(client)) >= NOTIFICATIONS // 3,
                   "a third of the notifications settled", 120)  # fmt: skip
        bots[0].kill()  # mid-run: its work, its claims and its relay leases are orphaned
        sender.join(NOTIFICATIONS / RATE + 60)
        assert not sender.is_alive(), "the client did not finish"
        assert [] == errors
        wait_until(lambda: len(terminal_events(client)) >= NOTIFICATIONS,
                   f"{NOTIFICATIONS} terminal events", 180,
                   lambda: log.read_text(errors="replace")[-3000:])  # fmt: skip
        wait_until(lambda: settled(client), "nothing pending, every outbox empty", 60)
        took = time.monotonic() - started
        codes = stop_all(bots[1:])
    finally:
        stop_all(bots)

    terminal = terminal_events(client)
    dead = sum(
        client.xlen(p.stream(Kind.DEAD_LETTERS)) for k in SUBSYSTEMS.values() for p in k.all()
    )
    assert {t.encode(): 1 for t in tracking} == dict(terminal)
    assert [0, 0] == codes
    assert 0 == dead
    text = log.read_text(errors="replace")
    sent_back = text.count("forwarded output refused")
    print(f"\ncluster notification chaos: notifications={NOTIFICATIONS} partitions={PARTITIONS} "
          f"shards=3 bots=3 killed=1 terminal-once=all took={took:.0f}s "
          f"forwards-refused-and-rerun={sent_back}")
