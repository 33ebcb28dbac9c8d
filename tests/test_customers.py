"""The customer-number example: exclusive access under SIGKILL, with real bot processes.

Three ``streamcqrs run examples.customers:app`` processes number 1,000 customers created
concurrently by four producers; one bot is SIGKILLed (with its worker) while numbers are
being assigned. Every customer ends with exactly one number, and the numbers are exactly
1..1,000: no duplicate, no gap.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from examples.customers.domain import CreateCustomer, NumberAssigned
from streamcqrs.streams import Subsystem
from streamcqrs.streams.commit import unpack_event
from streamcqrs.streams.envelope import decode
from streamcqrs.streams.keys import SubsystemKeys
from tests.reliability.bots import BotProcess, stop_all, wait_until
from tests.support import Backend, Run

CUSTOMERS = 1_000
PRODUCERS = 4
PART = SubsystemKeys("customers").partition(0)


def _produce(url: str, first: int, errors: list[str]) -> None:
    """Create customers first, first + PRODUCERS, ... (one producer of four)."""
    with redis.Redis.from_url(url) as sync:
        customers = Subsystem("customers", redis.asyncio.Redis.from_url(url), sync_client=sync)
        writer = customers.sync_writer("client-ops")
        try:
            for n in range(first, CUSTOMERS, PRODUCERS):
                writer.put(CreateCustomer(name=f"customer {n}"), object_id=f"c-{n}")
        except Exception as exc:  # reported by the test, which fails on any
            errors.append(repr(exc))


def _numbers(client: redis.Redis) -> dict[int, list[int]]:
    """Each customer's NumberAssigned numbers, read from its own event list."""
    pipe = client.pipeline(transaction=False)
    for n in range(CUSTOMERS):
        pipe.lrange(PART.aggregate(f"c-{n}"), 0, -1)
    out: dict[int, list[int]] = {}
    for n, packed_events in enumerate(pipe.execute()):
        numbers = []
        for version, packed in enumerate(packed_events, start=1):
            envelope, _ = unpack_event(packed, f"c-{n}", version)
            event: Any = decode("test", "0-0", envelope)
            if isinstance(event, NumberAssigned):
                numbers.append(event.number)
        out[n] = numbers
    return out


@pytest.mark.slow
def test_customer_numbers_are_unique_and_gapless_when_a_bot_is_killed(
    real: Backend, run: Run[None], tmp_path: Path
) -> None:
    """1,000 customers, 3 bot processes, one SIGKILLed mid-run: numbers 1..1,000 once each."""
    assert real.url
    log = tmp_path / "bots.log"
    bots = [
        BotProcess("examples.customers:app", real.url, "--visibility-timeout", "1",
                   "--block-ms", "100", log=log).start()
        for _ in range(3)
    ]  # fmt: skip
    client = real.sync_client()
    errors: list[str] = []
    try:
        for bot in bots:
            bot.wait_ready()
        producers = [
            threading.Thread(target=_produce, args=(real.url, p, errors), daemon=True)
            for p in range(PRODUCERS)
        ]
        for producer in producers:
            producer.start()

        def numbered() -> int:
            return int(client.llen(PART.aggregate("numbering")))

        wait_until(lambda: numbered() >= 200, "200 numbers assigned", 60)
        bots[0].kill()
        at_kill = numbered()
        for producer in producers:
            producer.join(60)
        assert [] == errors
        wait_until(lambda: numbered() >= CUSTOMERS, f"{CUSTOMERS} numbers", 120,
                   lambda: log.read_text()[-3000:])  # fmt: skip
        codes = stop_all(bots[1:])
    finally:
        stop_all(bots)
    assert 1 == bots[0].kills
    assert 200 <= at_kill < CUSTOMERS, "the kill did not land while numbers were assigned"
    assert [0, 0] == codes
    numbers = _numbers(client)
    assert {n: 1 for n in range(CUSTOMERS)} == {n: len(v) for n, v in numbers.items()}
    assert list(range(1, CUSTOMERS + 1)) == sorted(v[0] for v in numbers.values())
    assert CUSTOMERS == client.llen(PART.aggregate("numbering"))


pytestmark = pytest.mark.timeout(300)
