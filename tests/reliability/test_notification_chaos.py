"""The notification example under the chaos test's kills: one terminal event each, always.

Three bot processes run the whole example app (senders faked, so only the framework and the
example's saga are under test) while a driver SIGKILLs one at random and restarts it, and a
client sends notifications to recipients on email, Slack or both. Every notification must
end with exactly one terminal event (sent, failed or suppressed), and nothing may be left
pending. CI sends 300 with 8 kills; ``STREAMCQRS_LONG=1`` sends 2,000 with 20+ kills.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
import redis.asyncio

from examples.notification.bench_support import FAKE_SENDERS_ENV
from examples.notification.client import send_notification
from streamcqrs.streams import Kind, Subsystem, SubsystemKeys
from tests.reliability.bots import BotProcess, pending, stop_all, wait_until
from tests.support import Backend, async_client

LONG = bool(os.environ.get("STREAMCQRS_LONG"))
NOTIFICATIONS = 2_000 if LONG else 300
KILLS = 20 if LONG else 8
RATE = 100.0 if LONG else 40.0
"""Notifications sent per second: the client runs about as long as the kills go on."""
TERMINAL = {
    b"notification.NotificationSent",
    b"notification.NotificationFailed",
    b"notification.NotificationSuppressed",
}
EVENTS = SubsystemKeys("notification").partition(0).stream(Kind.EVENTS)


def _terminal_events(client: redis.Redis) -> Counter[bytes]:
    seen: Counter[bytes] = Counter()
    for _entry_id, fields in client.xrange(EVENTS):
        if fields.get(b"type") in TERMINAL:
            seen[fields[b"obj"]] += 1
    return seen


def _all_groups_drained(client: redis.Redis) -> bool:
    """True when no consumer group of any notification-example stream has pending entries."""
    for subsystem in ("notification", "email", "slack"):
        for kind in Kind:
            key = SubsystemKeys(subsystem).partition(0).stream(kind)
            if client.exists(key) and pending(client, key):
                return False
    return True


def _send(url: str, tracking: list[str], errors: list[str]) -> None:
    async def go() -> None:
        notification = Subsystem("notification", async_client(url))
        start = time.monotonic()
        for n in range(NOTIFICATIONS):
            recipient = ("alice", "bob", "carol", "dave")[n % 4]
            tracking.append(await send_notification(notification, recipient, f"n{n}", "body"))
            ahead = start + (n + 1) / RATE - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)

    try:
        asyncio.run(go())
    except Exception as exc:  # reported by the test, which fails on any
        errors.append(repr(exc))


@pytest.mark.timeout(300)
def test_every_notification_ends_exactly_once_while_bots_are_killed(
    real: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILLed bots: every notification gets exactly one terminal event, nothing pending."""
    assert real.url
    for name, value in FAKE_SENDERS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NOTIFICATION_DEADLINE", "60")
    rng = random.Random(4)
    bots = [
        BotProcess(
            "examples.notification.app:app", real.url, "--visibility-timeout", "1",
            "--block-ms", "100", log=tmp_path / "bots.log",
        ).start()
        for _ in range(3)
    ]  # fmt: skip
    client = real.sync_client()
    tracking: list[str] = []
    errors: list[str] = []
    sender = threading.Thread(target=_send, args=(real.url, tracking, errors), daemon=True)
    try:
        for bot in bots:
            bot.wait_ready()
        sender.start()
        kills = 0
        while kills < KILLS:
            time.sleep(rng.uniform(0.5, 1.0))
            victim = rng.choice(bots)
            victim.kill()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.3))
            victim.start()
        sender.join(NOTIFICATIONS / RATE + 60)
        assert not sender.is_alive(), "the client did not finish"
        assert [] == errors
        wait_until(
            lambda: len(_terminal_events(client)) >= NOTIFICATIONS,
            f"{NOTIFICATIONS} terminal events",
            120,
        )
        wait_until(lambda: _all_groups_drained(client), "every group drained", 60)
        for bot in bots:
            bot.wait_ready()
        codes = stop_all(bots)
    finally:
        stop_all(bots)

    terminal = _terminal_events(client)
    assert {t.encode(): 1 for t in tracking} == dict(terminal)
    assert [0, 0, 0] == codes
    print(f"\nnotification chaos: notifications={NOTIFICATIONS} kills={kills} terminal-once=all")
