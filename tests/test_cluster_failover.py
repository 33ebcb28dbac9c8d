"""Failover on a real cluster: a primary is SIGKILLed under a bot and a producer.

A cluster of its own (3 primaries, a replica each; a node silent for 1 s is failed over), a
bot process running ``tests.clusterapps:botapps`` (4 partitions spread over the shards), and
a producer putting ``Do(n)`` with ``durable=True`` (each put returns once a replica has it).
Mid-run the primary serving partition 0 is killed: its replica is promoted, the producer's
puts resume by themselves within a bounded time, and every put acknowledged as durable, before
the kill or after, is handled: its aggregate ``job-n`` holds its one ``Done`` event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.exceptions

from streamcqrs.streams import Kind, Settings, Subsystem, SubsystemKeys
from streamcqrs.streams.cluster import LocalCluster
from streamcqrs.streams.errors import NotDurable, ServerUnavailable, StreamError
from tests.botapps import SUBSYSTEM, Do
from tests.clusterapps import PARTITIONS
from tests.reliability.bots import BotProcess, wait_until

pytestmark = pytest.mark.cluster

RESUME_WITHIN_S = 15.0
"""The bound on the gap in acknowledged puts around the kill (failover takes ~2-3 s here)."""
KEYS = SubsystemKeys(SUBSYSTEM, PARTITIONS)
PARTITION_0 = KEYS.partition(0).stream(Kind.CLIENT_OPERATIONS)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """A cluster for this test alone: it loses a node."""
    try:
        made = LocalCluster(shards=3, replicas=1, node_timeout_ms=1000).start()
    except ServerUnavailable as exc:
        pytest.skip(f"no cluster here: {exc}")
    yield made
    made.stop()


class Producer(threading.Thread):
    """Puts Do(n) durably, one after another, noting what became of each and when."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = Settings(url=url).client()
        self.writer = Subsystem("botapp", Settings(url=url).async_client(), partitions=PARTITIONS,
                                sync_client=self.client).sync_writer("client-ops")  # fmt: skip
        self.acked: list[tuple[int, float]] = []
        """Confirmed by a replica (WAIT) when the put returned."""
        self.unconfirmed: list[tuple[int, float]] = []
        """Written, but no replica confirmed in time (NotDurable): the shard had none."""
        self.failed: list[str] = []
        self.halt = threading.Event()

    def written(self) -> list[tuple[int, float]]:
        """Every put the server took, confirmed or not."""
        return sorted(self.acked + self.unconfirmed)

    def run(self) -> None:
        n = 0
        while not self.halt.is_set() and n < 5000:
            try:
                self.writer.put(Do(n=n), object_id=str(n), durable=True)
                self.acked.append((n, time.monotonic()))
            except NotDurable:
                self.unconfirmed.append((n, time.monotonic()))
            except (StreamError, redis.exceptions.RedisError) as exc:
                self.failed.append(f"{n}: {type(exc).__name__}: {exc}")
            n += 1
            time.sleep(0.01)



@pytest.mark.slow
def test_puts_resume_after_a_primary_dies_and_every_durable_put_is_handled(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Kill the primary of partition 0: its puts resume within RESUME_WITHIN_S (unconfirmed
    while the shard has no replica, confirmed again once the old node is back as one), and
    every put acknowledged as durable before the kill, and every put written after, is
    handled: exactly one Done event each."""
    victim = cluster.node_for(PARTITION_0)
    # Every partition that primary serves (partition 0 and perhaps another): their puts stop
    # together, and each waits out its failover in the producer's one line of puts.
    served = {p.partition for p in KEYS.all()
              if cluster.node_for(p.stream(Kind.CLIENT_OPERATIONS)) == victim}  # fmt: skip

    def on_victim(n: int) -> bool:
        return KEYS.for_object(str(n)).partition in served

    bot = BotProcess("tests.clusterapps:botapps", cluster.url, "--visibility-timeout", "2",
                     "--block-ms", "100", "--mover-interval", "0.05",
                     log=tmp_path / "bot.log").start()  # fmt: skip
    producer = Producer(cluster.url)
    try:
        bot.wait_ready()
        producer.start()
        wait_until(lambda: sum(on_victim(n) for n, _ in producer.acked) >= 20,
                   "20 durable puts into the victim's partitions", 30)  # fmt: skip
        killed_at = time.monotonic()
        cluster.kill(victim)
        wait_until(lambda: cluster.node_for(PARTITION_0) != victim, "the replica's promotion",
                   RESUME_WITHIN_S)  # fmt: skip
        promoted_at = time.monotonic()

        def after(at: float) -> list[int]:
            return [n for n, t in producer.written() if t > at and on_victim(n)]

        wait_until(lambda: bool(after(killed_at)), "a put into its partitions after the kill",
                   RESUME_WITHIN_S + 15)  # fmt: skip
        resumed = min(t for n, t in producer.written() if t > killed_at and on_victim(n))
        cluster.restart(victim)  # back as the replica of the promoted node
        back_at = time.monotonic()
        wait_until(lambda: any(t > back_at and on_victim(n) for n, t in producer.acked),
                   "a confirmed put there once the shard has a replica again", 30)  # fmt: skip
        producer.halt.set()
        producer.join(30)
        before = [n for n, t in producer.acked if t <= killed_at]
        written = [n for n, _ in producer.written()]
        admin = Settings(url=cluster.url).client()

        def version(n: int) -> int:
            return int(admin.llen(KEYS.for_object(f"job-{n}").aggregate(f"job-{n}")))

        wait_until(lambda: all(version(n) for n in written), "every written put handled", 90)
        versions = {n: version(n) for n in written}
        assert bot.process is not None and bot.process.poll() is None
    finally:
        producer.halt.set()
        bot.stop()
    gap = resumed - killed_at
    print(f"\nfailover: replica promoted {promoted_at - killed_at:.1f} s after the kill; the "
          f"first put into its partitions {sorted(served)} returned {gap:.1f} s after the kill "
          "(an unconfirmed one waits 2 s for a replica first); "
          f"{len(before)} confirmed before the kill, {len(producer.unconfirmed)} unconfirmed "
          f"while the shard had no replica, {len(written)} written in all, "
          f"{len(producer.failed)} refused")
    assert gap < RESUME_WITHIN_S
    assert set(before) <= set(written)
    assert {n: 1 for n in written} == versions
