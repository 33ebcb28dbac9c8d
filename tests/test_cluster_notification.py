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

import threading
import time
from pathlib import Path

import pytest

from examples.notification.bench_support import FAKE_SENDERS_ENV
from streamcqrs.streams import Kind, SubsystemKeys
from tests.clusterapps import PARTITIONS
from tests.reliability.bots import BotProcess, stop_all, wait_until
from tests.reliability.notifications import drained, send_notifications, terminal_events
from tests.support import sync_client

pytestmark = pytest.mark.cluster

NOTIFICATIONS = 1000
RATE = 100.0
"""Notifications sent per second."""
SUBSYSTEMS = {name: SubsystemKeys(name, PARTITIONS) for name in ("notification", "email", "slack")}


@pytest.mark.slow
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
    sender = threading.Thread(
        target=send_notifications, args=(cluster_url, tracking, errors),
        kwargs={"count": NOTIFICATIONS, "rate": RATE, "partitions": PARTITIONS}, daemon=True,
    )  # fmt: skip
    started = time.monotonic()
    try:
        for bot in bots:
            bot.wait_ready()
        sender.start()
        wait_until(lambda: len(terminal_events(client, PARTITIONS)) >= NOTIFICATIONS // 3,
                   "a third of the notifications settled", 120)  # fmt: skip
        bots[0].kill()  # mid-run: its work, its claims and its relay leases are orphaned
        sender.join(NOTIFICATIONS / RATE + 60)
        assert not sender.is_alive(), "the client did not finish"
        assert [] == errors
        wait_until(lambda: len(terminal_events(client, PARTITIONS)) >= NOTIFICATIONS,
                   f"{NOTIFICATIONS} terminal events", 180,
                   lambda: log.read_text(errors="replace")[-3000:])  # fmt: skip
        wait_until(lambda: drained(client, PARTITIONS), "nothing pending, every outbox empty", 60)
        took = time.monotonic() - started
        codes = stop_all(bots[1:])
    finally:
        stop_all(bots)

    terminal = terminal_events(client, PARTITIONS)
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
