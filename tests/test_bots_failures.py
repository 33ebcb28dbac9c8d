"""Bad input and failing handlers, with real ``streamcqrs run`` processes.

A poison entry is dead-lettered once and the bot goes on; a handler that fails is retried
with growing delays; one that always fails ends Failed with one dead letter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import redis

from streamcqrs.domain import ExecutionPolicy
from streamcqrs.streams import Subsystem, now_ms
from streamcqrs.streams.deadletter import read_dead_letters_sync
from streamcqrs.streams.envelope import as_str, encode, entries
from streamcqrs.streams.handling import HandlingStore, Status
from streamcqrs.streams.keys import Kind, SubsystemKeys
from tests.botapps import (
    SUBSYSTEM,
    BotProcess,
    Do,
    Done,
    Doomed,
    Flaky,
    Governed,
    Ignored,
    Misdeclared,
    Rejected,
    Sleepy,
    Steered,
    attempts_key,
    ns_of,
    put_many,
    wait_until,
)
from tests.support import Backend

KEYS = SubsystemKeys(SUBSYSTEM)
PART = KEYS.partition(0)
OPS = PART.stream(Kind.CLIENT_OPERATIONS)
EVENTS = PART.stream(Kind.EVENTS)
DEAD = PART.stream(Kind.DEAD_LETTERS)


def pending(client: redis.Redis) -> dict[str, int]:
    """Pending entries per consumer group of botapp's client operations."""
    return {g["name"].decode(): int(g["pending"]) for g in client.xinfo_groups(OPS)}


def status_of(real: Backend, run: Any, concern: str, message_id: str) -> Status:
    """The handling status of one record for one concern."""
    store = HandlingStore(real.client(), KEYS, Kind.CLIENT_OPERATIONS, concern)
    result: Status = run(store.status(message_id))
    return result


def test_a_poison_entry_is_dead_lettered_once_and_the_bot_goes_on(
    real: Backend, tmp_path: Path
) -> None:
    """An entry that is no envelope, among 1,000 good operations, gives exactly one dead
    letter (with the reason and its raw bytes, though seven concerns read the stream), all
    1,000 are handled, nothing stays pending, and the bot is still running."""
    client = real.sync_client()
    put_many(client, ((Do(n=n), str(n)) for n in range(500)))
    poison = as_str(client.xadd(OPS, {b"junk": b"\xff\x00not an envelope"}))
    put_many(client, ((Do(n=n), str(n)) for n in range(500, 1000)))
    with BotProcess(real.url or "", tmp_path / "bot.log") as bot:
        wait_until(
            lambda: client.xlen(EVENTS) >= 1000 and client.xlen(DEAD) >= 1
            and sum(pending(client).values()) == 0,
            "1,000 operations handled and the poison dead-lettered", 45, bot,
        )  # fmt: skip
        assert bot.alive()
    assert list(range(1000)) == sorted(ns_of(client, EVENTS))
    letters = read_dead_letters_sync(client, KEYS)
    assert 1 == len(letters), [s.letter.model_dump(exclude={"fields"}) for s in letters]
    (stored,) = letters
    letter = stored.letter
    assert (OPS, poison) == (letter.stream, letter.entry_id)
    assert "missing envelope fields" in letter.reason
    assert {b"junk": b"\xff\x00not an envelope"} == letter.raw


def test_each_kind_of_bad_input_is_dead_lettered_with_its_reason(
    real: Backend, tmp_path: Path
) -> None:
    """Undecodable payload, unknown type and a payload that fails validation: one dead
    letter each, saying why; the good operation after them is handled."""
    client = real.sync_client()
    good = encode(Do(n=1), object_id="1")
    fields: dict[Any, Any] = dict(zip(good.fields()[::2], good.fields()[1::2], strict=True))
    bad = {
        "payload": {**fields, "id": "m-payload", "data": b"\xc1\xc1"},
        "type": {**fields, "id": "m-type", "type": "nobody.Knows"},
        "invalid": {**fields, "id": "m-invalid", "data": b"\x81\xa1n\xa3abc"},
    }
    ids = {name: as_str(client.xadd(OPS, f)) for name, f in bad.items()}
    put_many(client, [(Do(n=2), "2")])
    with BotProcess(real.url or "", tmp_path / "bot.log") as bot:
        wait_until(
            lambda: client.xlen(DEAD) >= 3 and client.xlen(EVENTS) >= 1,
            "three dead letters and one handled operation", 30, bot,
        )  # fmt: skip
    reasons = {s.letter.entry_id: s.letter.reason for s in read_dead_letters_sync(client, KEYS)}
    assert set(ids.values()) == set(reasons)
    assert "not valid" in reasons[ids["payload"]]
    assert "nobody.Knows" in reasons[ids["type"]]
    assert "does not fit" in reasons[ids["invalid"]]
    assert [2] == ns_of(client, EVENTS)


def test_a_handler_failing_twice_completes_on_the_third_attempt_with_growing_delays(
    real: Backend, run: Any, tmp_path: Path
) -> None:
    """Attempts 1 and 2 fail; attempt 3 commits. The wait before attempt 3 is longer than the
    wait before attempt 2 (exponential backoff: 0.4 s then 0.8 s, each up to 25% shorter)."""
    client = real.sync_client()
    put_many(client, [(Flaky(n=7, failures=2), "7")])
    message_id = entries(client.xrange(OPS))[0][1][b"id"].decode()
    with BotProcess(real.url or "", tmp_path / "bot.log", "--retry-base", "0.4") as bot:
        wait_until(lambda: client.xlen(EVENTS) >= 1, "the third attempt to commit", 30, bot)
        wait_until(lambda: sum(pending(client).values()) == 0, "the ack", 10, bot)
    first, second, third = (int(t) for t in client.lrange(attempts_key(7), 0, -1))
    assert 300 <= second - first < third - second, (first, second, third)
    assert [7] == ns_of(client, EVENTS)
    assert Status.COMPLETED == status_of(real, run, "flaky", message_id)
    assert 0 == client.xlen(DEAD)


def test_not_yet_waits_without_counting_and_retry_counts(
    real: Backend, run: Any, tmp_path: Path
) -> None:
    """NotYet (self-cancel) puts the record back without using an attempt; Retry(delay=)
    uses one: the handler that said both runs its final time as attempt 2, and the record's
    history shows self-cancel, retry, complete."""
    client = real.sync_client()
    put_many(client, [(Steered(n=4), "4")])
    message_id = entries(client.xrange(OPS))[0][1][b"id"].decode()
    with BotProcess(real.url or "", tmp_path / "bot.log") as bot:
        wait_until(lambda: client.xlen(EVENTS) >= 1, "the third call to commit", 30, bot)
    assert [2] == ns_of(client, EVENTS, "attempt")
    store = HandlingStore(real.client(), KEYS, Kind.CLIENT_OPERATIONS, "steered")
    actions = [entry.action.value for entry in run(store.history(message_id))]
    expected = ["claim", "self-cancel", "claim", "retry", "claim", "complete"]
    assert expected == actions


def test_a_handler_that_always_fails_ends_failed_with_one_dead_letter(
    real: Backend, run: Any, tmp_path: Path
) -> None:
    """After --max-attempts 3 failed attempts the record is Failed, one dead letter holds the
    error, its traceback and the attempt count, and nothing is left to retry."""
    client = real.sync_client()
    put_many(client, [(Doomed(n=3), "3")])
    message_id = entries(client.xrange(OPS))[0][1][b"id"].decode()
    args = ("--max-attempts", "3", "--retry-base", "0.05")
    with BotProcess(real.url or "", tmp_path / "bot.log", *args) as bot:
        wait_until(lambda: client.xlen(DEAD) >= 1, "the dead letter", 30, bot)
        wait_until(lambda: sum(pending(client).values()) == 0, "the ack", 10, bot)
    (stored,) = read_dead_letters_sync(client, KEYS)
    letter = stored.letter
    assert (3, "doomed", "RuntimeError") == (letter.attempts, letter.concern, letter.error_type)
    assert "doomed operation 3 fails every time" in letter.traceback
    assert message_id == letter.message_id
    assert Status.FAILED == status_of(real, run, "doomed", message_id)
    assert 0 == client.zcard(PART.delayed(Kind.CLIENT_OPERATIONS))
    assert 3 == client.xlen(OPS)  # the original and the two retries


def test_fail_and_a_declaration_mistake_fail_the_record_at_once(
    real: Backend, run: Any, tmp_path: Path
) -> None:
    """A handler raising Fail, and one writing a stream it did not declare (HandlerError),
    are Failed and dead-lettered on their first attempt with the reason, not retried up to
    --max-attempts (5 here)."""
    client = real.sync_client()
    put_many(client, [(Rejected(n=1), "r-1"), (Misdeclared(n=2), "m-2")])
    with BotProcess(real.url or "", tmp_path / "bot.log", "--max-attempts", "5") as bot:
        wait_until(lambda: client.xlen(DEAD) >= 2, "two dead letters", 30, bot)
    letters = {s.letter.type_name: s.letter for s in read_dead_letters_sync(client, KEYS)}
    assert {"botapp.Rejected", "botapp.Misdeclared"} == set(letters)
    rejected, misdeclared = letters["botapp.Rejected"], letters["botapp.Misdeclared"]
    assert (1, "Fail: customer 1 does not exist") == (rejected.attempts, rejected.reason)
    assert 1 == misdeclared.attempts
    assert "did not declare writes to botapp/sagas" in misdeclared.reason
    for letter in letters.values():
        assert Status.FAILED == status_of(real, run, "strict", letter.message_id)


def test_an_operation_no_handler_takes_is_dead_lettered_once_unless_ignored(
    real: Backend, tmp_path: Path
) -> None:
    """A registered type no concern handles on client-ops is not acked unseen: one dead
    letter (eight concerns read the stream) says "no handler for TYPE on STREAM". A type the
    app ignores there is acked without one; both leave nothing pending."""
    client = real.sync_client()
    put_many(client, [(Done(n=1), "d-1"), (Ignored(n=2), "i-2"), (Do(n=3), "3")])
    with BotProcess(real.url or "", tmp_path / "bot.log") as bot:
        wait_until(
            lambda: client.xlen(DEAD) >= 1 and client.xlen(EVENTS) >= 1
            and sum(pending(client).values()) == 0,
            "the unhandled op dead-lettered and the rest settled", 30, bot,
        )  # fmt: skip
    (stored,) = read_dead_letters_sync(client, KEYS)
    assert "botapp.Done" == stored.letter.type_name
    assert "no handler for botapp.Done on botapp/client-ops" in stored.letter.reason
    assert [3] == ns_of(client, EVENTS)


def test_an_operations_policy_beats_the_bots_settings(
    real: Backend, run: Any, tmp_path: Path
) -> None:
    """An operation whose class policy allows 2 attempts is Failed after 2 while the bot's
    --max-attempts is 5; one put with a 0.5 s timeout whose first attempt sleeps 5 s is
    cancelled and retried, and commits on its second attempt; one put already expired never
    reaches its handler and is Failed "expired"."""
    client = real.sync_client()
    writer = Subsystem(SUBSYSTEM, real.client(), sync_client=client).sync_writer("client-ops")
    writer.put(Governed(n=1), object_id="g-1")
    writer.put(Sleepy(n=2), object_id="s-2", policy=ExecutionPolicy(timeout=0.5))
    expired = writer.put(Sleepy(n=3), object_id="s-3",
                         policy=ExecutionPolicy(expires_at=now_ms() - 1000))  # fmt: skip
    with BotProcess(real.url or "", tmp_path / "bot.log", "--max-attempts", "5",
                    "--retry-base", "0.05") as bot:  # fmt: skip
        wait_until(
            lambda: client.xlen(DEAD) >= 2 and client.xlen(EVENTS) >= 1, "the outcomes", 30, bot
        )
        time.sleep(0.5)  # a third attempt of Governed(1) would have run by now
    assert 2 == client.llen(attempts_key(1))
    assert [2] == ns_of(client, EVENTS) and [2] == ns_of(client, EVENTS, "attempt")
    assert 0 == client.llen(attempts_key(3))
    letters = {s.letter.message_id: s.letter for s in read_dead_letters_sync(client, KEYS)}
    assert "expired" in letters[expired.message_id].reason
    assert Status.FAILED == status_of(real, run, "governed", expired.message_id)


def test_entries_stored_without_a_policy_are_handled_as_before(
    real: Backend, tmp_path: Path
) -> None:
    """An entry and a retry parked in the delayed set, both in the exact format stored before
    policies existed (no policy field; a 15-item delayed member), are handled with the bot's
    own settings."""
    client = real.sync_client()
    flat = encode(Do(n=7), object_id="7").fields()
    client.xadd(OPS, dict(zip(flat[::2], flat[1::2], strict=True)))
    old_member = msgpack.packb(
        ["client-ops", "botapp.Do", msgpack.packb({"n": 8, "pause": 0.0}), 1, "8",
         "0123456789abcdef0123456789abcdef", "", "", now_ms(), [], b"m", "write", 1, 2, "do"]
    )  # fmt: skip
    client.zadd(PART.delayed(Kind.CLIENT_OPERATIONS), {old_member: now_ms()})
    with BotProcess(real.url or "", tmp_path / "bot.log") as bot:
        wait_until(lambda: client.xlen(EVENTS) >= 2, "both old entries", 30, bot)
    assert [7, 8] == sorted(ns_of(client, EVENTS))
