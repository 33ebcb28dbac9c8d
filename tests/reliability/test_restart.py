"""Server restarts under load: what survives with the append-only file, and what does not.

A private server is SIGKILLed while a producer puts operations and two bots handle them, then
started again on the same directory. With ``appendonly yes`` and ``appendfsync always`` every
operation whose put returned before the kill is handled afterwards, exactly once; producer
and bots reconnect by themselves. With persistence off the server comes back empty: what was
in it is gone, and the bots recreate their groups and carry on with new work.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio

from streamcqrs.domain.errors import StreamCQRSError
from streamcqrs.streams import Kind, LocalServer, Subsystem
from streamcqrs.streams.connection import Settings
from streamcqrs.streams.keys import SubsystemKeys
from tests.reliability.apps import Do
from tests.reliability.bots import BotProcess, objects_in, pending, stop_all, wait_until

KEYS = SubsystemKeys("chaos").partition(0)
STREAM = KEYS.stream(Kind.CLIENT_OPERATIONS)
EVENTS = KEYS.stream(Kind.EVENTS)
RATE = 400.0


class Producer(threading.Thread):
    """Puts operations at RATE per second; remembers which puts the server acknowledged."""

    def __init__(self, url: str, first: int, count: int) -> None:
        super().__init__(daemon=True)
        self.url, self.first, self.count = url, first, count
        self.acknowledged: list[int] = []
        self.refused: list[str] = []

    def run(self) -> None:
        """Put each operation once; a put that fails after the client's retries is refused."""
        settings = Settings(url=self.url)
        client = settings.client()
        subsystem = Subsystem("chaos", redis.asyncio.Redis.from_url(self.url), sync_client=client)
        writer = subsystem.sync_writer(Kind.CLIENT_OPERATIONS)
        start = time.monotonic()
        for at, n in enumerate(range(self.first, self.first + self.count)):
            try:
                writer.put(Do(n=n), object_id=n)
                self.acknowledged.append(n)
            except (redis.RedisError, StreamCQRSError) as exc:
                self.refused.append(f"{n}: {exc!r}")
            ahead = start + (at + 1) / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        client.close()


def _bots(url: str, log: Path) -> list[BotProcess]:
    return [
        BotProcess(
            "tests.reliability.apps:app", url, "--visibility-timeout", "2", "--block-ms", "100",
            "--log-level", "info", log=log,
        ).start()
        for _ in range(2)
    ]  # fmt: skip


def _restart_under_load(server: LocalServer, log: Path, total: int) -> tuple[Producer, float]:
    """Kill and restart the server while a producer puts ``total`` operations."""
    producer = Producer(server.url, 0, total)
    producer.start()
    time.sleep(total / RATE / 3)
    server.kill()
    killed_at = time.monotonic()
    time.sleep(1.0)
    server.start()
    producer.join(total / RATE + 60)
    assert not producer.is_alive(), "the producer did not finish"
    return producer, time.monotonic() - killed_at


def _diagnose(client: redis.Redis, acknowledged: set[bytes], log: Path) -> str:
    """Where the unhandled operations are: in the stream, pending, dead-lettered; the log."""
    missing = sorted(acknowledged - set(objects_in(client, EVENTS, b"chaos.Done")))
    entries = {f.get(b"obj"): eid for eid, f in client.xrange(STREAM)}
    found = {m: entries.get(m.removeprefix(b"job-")) for m in missing[:20]}
    groups = client.xinfo_groups(STREAM)
    consumers = client.xinfo_consumers(STREAM, "do") if groups else []
    pend = client.xpending_range(STREAM, "do", "-", "+", 20) if groups else []
    dead = client.xlen(KEYS.stream(Kind.DEAD_LETTERS))
    return (
        f"missing {len(missing)}: {found}\ngroups {groups}\nconsumers {consumers}\n"
        f"pending {pend}\ndead letters {dead}\nlog tail:\n"
        f"{log.read_text(errors='replace')[-3000:]}"
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_with_appendfsync_always_every_acknowledged_put_is_handled(tmp_path: Path) -> None:
    """appendonly+always: each put acknowledged before the kill is handled once afterwards."""
    server = LocalServer(appendonly=True, directory=str(tmp_path / "server")).start()
    bots = _bots(server.url, tmp_path / "bots.log")
    try:
        producer, _ = _restart_under_load(server, tmp_path / "bots.log", 1200)
        client = redis.Redis.from_url(server.url)
        acknowledged = {f"job-{n}".encode() for n in producer.acknowledged}
        wait_until(
            lambda: acknowledged <= set(objects_in(client, EVENTS, b"chaos.Done")),
            f"{len(acknowledged)} acknowledged operations handled",
            90,
            diagnose=lambda: _diagnose(client, acknowledged, tmp_path / "bots.log"),
        )
        wait_until(lambda: pending(client, STREAM) == 0, "no pending entries", 30)
        events = objects_in(client, EVENTS, b"chaos.Done")
        codes = stop_all(bots)
    finally:
        stop_all(bots)
        server.stop()

    assert [0, 0] == codes
    assert len(producer.acknowledged) >= 1000, producer.refused[:5]
    assert set() == acknowledged - set(events), "acknowledged puts lost"
    assert [] == [obj for obj, seen in events.items() if seen != 1], "handled twice"
    print(
        f"\nrestart (appendfsync always): acknowledged={len(producer.acknowledged)} "
        f"refused={len(producer.refused)} handled={len(events)} lost=0 duplicated=0"
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_without_persistence_the_server_forgets_and_bots_carry_on(tmp_path: Path) -> None:
    """Persistence off: a killed server comes back empty; bots recreate groups and go on."""
    server = LocalServer(directory=str(tmp_path / "server")).start()
    bots = _bots(server.url, tmp_path / "bots.log")
    client = redis.Redis.from_url(server.url)
    try:
        before = Producer(server.url, 0, 300)
        before.run()
        wait_until(lambda: len(objects_in(client, EVENTS, b"chaos.Done")) >= 300, "300", 60)
        server.kill()
        time.sleep(0.5)
        server.start()
        # The bots, still running, may already have made their input stream again (XGROUP
        # CREATE ... MKSTREAM) by now; nothing else the server held may be there.
        left = set(client.keys()) - {STREAM.encode()}
        assert set() == left, "a server without persistence restarts empty"

        after = Producer(server.url, 1000, 300)
        after.run()
        wait_until(lambda: len(objects_in(client, EVENTS, b"chaos.Done")) >= 300, "300", 60)
        events = objects_in(client, EVENTS, b"chaos.Done")
        codes = stop_all(bots)
    finally:
        stop_all(bots)
        server.stop()

    assert [0, 0] == codes
    assert {f"job-{n}".encode(): 1 for n in range(1000, 1300)} == dict(events)
