"""The notification example under the chaos test's kills: one terminal event each, always.

Three bot processes run the whole example app (senders faked, so only the framework and the
example's saga are under test) while a driver SIGKILLs one at random and restarts it, and a
client sends notifications to recipients on email, Slack or both. Every notification must
end with exactly one terminal event (sent, failed or suppressed), and nothing may be left
pending. CI sends 300 with 8 kills; ``STREAMCQRS_LONG=1`` sends 2,000 with 20+ kills.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from examples.notification.bench_support import FAKE_SENDERS_ENV
from tests.reliability.bots import BotProcess, stop_all, wait_until
from tests.reliability.notifications import drained, send_notifications, terminal_events
from tests.support import Backend

LONG = bool(os.environ.get("STREAMCQRS_LONG"))
NOTIFICATIONS = 2_000 if LONG else 300
KILLS = 20 if LONG else 8
RATE = 100.0 if LONG else 40.0
"""Notifications sent per second: the client runs about as long as the kills go on."""


@pytest.mark.slow
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
    sender = threading.Thread(
        target=send_notifications, args=(real.url, tracking, errors),
        kwargs={"count": NOTIFICATIONS, "rate": RATE}, daemon=True,
    )  # fmt: skip
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
            lambda: len(terminal_events(client)) >= NOTIFICATIONS,
            f"{NOTIFICATIONS} terminal events",
            120,
        )
        wait_until(lambda: drained(client), "every group drained", 60)
        for bot in bots:
            bot.wait_ready()
        codes = stop_all(bots)
    finally:
        stop_all(bots)

    terminal = terminal_events(client)
    assert {t.encode(): 1 for t in tracking} == dict(terminal)
    assert [0, 0, 0] == codes
    print(f"\nnotification chaos: notifications={NOTIFICATIONS} kills={kills} terminal-once=all")
