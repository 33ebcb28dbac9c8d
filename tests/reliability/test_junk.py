"""Junk input: generated broken entries, written straight into a live bot's stream.

Hypothesis generates the junk (random bytes, truncated msgpack, wrong field types, unknown
type names, missing envelope fields, invalid payloads) and the test mixes in oversized
payloads and valid operations. Every junk entry must end in the dead-letter stream with a
reason, every valid one must be handled, and the bot's worker must never die (its pid stays
the same from start to end). CI writes 10,000 junk entries; ``STREAMCQRS_LONG=1`` writes 50,000.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from streamcqrs.streams import Kind
from streamcqrs.streams.deadletter import read_dead_letters_sync
from streamcqrs.streams.keys import SubsystemKeys
from tests.reliability.bots import BotProcess, objects_in, pending, stop_all, wait_until
from tests.reliability.junk import Junk, huge_payload, junk, valid_fields
from tests.support import Backend

LONG = bool(os.environ.get("STREAMCQRS_LONG"))
JUNK = 50_000 if LONG else 10_000
VALID_EVERY = 4
"""One valid operation after every this many junk entries."""
HUGE_EVERY = 500
"""One oversized payload (over 1 MiB) after every this many junk entries."""

KEYS = SubsystemKeys("chaos")
STREAM = KEYS.partition(0).stream(Kind.CLIENT_OPERATIONS)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_junk_entry_is_dead_lettered_and_every_valid_one_handled(
    real: Backend, tmp_path: Path
) -> None:
    """Junk -> dead letter with a reason; valid -> handled; the bot's worker never dies."""
    assert real.url
    client = real.sync_client()
    bot = BotProcess(
        "tests.reliability.apps:app", real.url, "--block-ms", "100", log=tmp_path / "bot.log"
    ).start()
    junk_ids: dict[bytes, str] = {}
    valid: list[int] = []

    def write(item: Junk) -> None:
        category, fields = item
        junk_ids[client.xadd(STREAM, fields)] = category  # type: ignore[arg-type]
        if len(junk_ids) % HUGE_EVERY == 0:
            category, fields = huge_payload()
            junk_ids[client.xadd(STREAM, fields)] = category  # type: ignore[arg-type]
        if len(junk_ids) % VALID_EVERY == 0:
            valid.append(len(valid))
            client.xadd(STREAM, valid_fields(valid[-1]))  # type: ignore[arg-type]

    try:
        bot.wait_ready()
        workers = bot.workers()
        generate = settings(
            max_examples=JUNK, database=None, deadline=None,
            suppress_health_check=list(HealthCheck),
        )(given(junk)(write))  # fmt: skip
        generate()
        assert len(junk_ids) >= JUNK, "hypothesis generated fewer entries than asked"

        dead = lambda: sum(1 for _ in read_dead_letters_sync(client, KEYS))  # noqa: E731
        wait_until(lambda: dead() >= len(junk_ids), f"{len(junk_ids)} dead letters", 120)
        wait_until(
            lambda: len(objects_in(client, KEYS.partition(0).stream(Kind.EVENTS), b"chaos.Done"))
            >= len(valid),
            f"{len(valid)} valid operations handled",
            60,
        )
        wait_until(lambda: pending(client, STREAM) == 0, "no pending entries", 30)
        assert workers == bot.workers(), "the bot's worker process was replaced"
        assert bot.process is not None and bot.process.poll() is None
        code = bot.stop()
    finally:
        stop_all([bot])

    letters = read_dead_letters_sync(client, KEYS)
    assert set(junk_ids) == {letter.letter.entry_id.encode() for letter in letters}
    assert [] == [letter for letter in letters if not letter.letter.reason]
    events = objects_in(client, KEYS.partition(0).stream(Kind.EVENTS), b"chaos.Done")
    assert {f"job-{n}".encode(): 1 for n in valid} == dict(events)
    assert 0 == code
    categories: dict[str, int] = {}
    for category in junk_ids.values():
        categories[category] = categories.get(category, 0) + 1
    print(
        f"\njunk: tried={len(junk_ids)} dead-lettered={len(letters)} valid={len(valid)} "
        f"handled={len(events)} bot crashes=0 by category={categories}"
    )
