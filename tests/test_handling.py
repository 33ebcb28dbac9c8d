"""The handling store: claims, Naos's transition table, switches, history and composites.

Every test runs on a real server and on the in-memory mode (fakeredis).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.streams import Batch, Kind, Subsystem
from streamcqrs.streams.envelope import as_str
from streamcqrs.streams.errors import InvalidTransition
from streamcqrs.streams.handling import (
    CLAIMABLE,
    TRANSITIONS,
    Action,
    Claim,
    Composite,
    HandlingStore,
    HistoryEntry,
    Status,
    transition,
)
from tests.messages import Ping
from tests.support import Backend, Run

OPS = Kind.CLIENT_OPERATIONS

# How to bring a fresh record to each status a record can hold (DisabledForStream is the
# stream's switch, never a record's own status: tested apart below).
PATHS: dict[Status, tuple[Action, ...]] = {
    Status.AVAILABLE_BY_DEFAULT: (),
    Status.RUNNING: (Action.CLAIM,),
    Status.COMPLETED: (Action.CLAIM, Action.COMPLETE),
    Status.FAILED: (Action.CLAIM, Action.FAIL),
    Status.ARCHIVED_AFTER_FAILURE: (Action.CLAIM, Action.FAIL, Action.ARCHIVE_FAILURE),
    Status.AVAILABLE_AFTER_COMPLETION: (Action.CLAIM, Action.COMPLETE, Action.RESET_COMPLETED),
    Status.AVAILABLE_AFTER_FAILURE: (Action.CLAIM, Action.FAIL, Action.RESET_FAILED),
    Status.AVAILABLE_AFTER_EXTERNAL_CANCELLATION: (Action.CLAIM, Action.EXTERNAL_CANCEL),
    Status.AVAILABLE_AFTER_SELF_CANCELLATION: (Action.CLAIM, Action.SELF_CANCEL),
    Status.DISABLED_FOR_RECORD: (Action.DISABLE_RECORD,),
}


def _store(sub: Subsystem, concern: str = "email") -> HandlingStore:
    return HandlingStore(sub.client, sub.keys, OPS, concern)


async def _everything(client: redis.asyncio.Redis) -> dict[Any, Any]:
    """Every key on the server and what it holds, to prove a refused change wrote nothing."""
    out: dict[Any, Any] = {}
    for key in sorted(await client.keys("*")):
        kind = as_str(await client.type(key))
        if kind == "hash":
            out[key] = await client.hgetall(key)
        elif kind == "list":
            out[key] = await client.lrange(key, 0, -1)
        elif kind == "stream":
            out[key] = await client.xrange(key)
        elif kind == "zset":
            out[key] = await client.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = await client.get(key)
    return out


async def _bring(store: HandlingStore, record: str, status: Status) -> None:
    for action in PATHS[status]:
        await store.apply(record, action)


def test_the_table_is_naos_s() -> None:
    """Claims go from any Available status; outcomes only from Running; resets from theirs."""
    assert CLAIMABLE == {s for s in Status if s.value.startswith("Available")}
    assert (CLAIMABLE, Status.RUNNING) == TRANSITIONS[Action.CLAIM]
    for action in (Action.COMPLETE, Action.FAIL, Action.RETRY, Action.SELF_CANCEL,
                   Action.EXTERNAL_CANCEL, Action.RECLAIM):  # fmt: skip
        assert {Status.RUNNING} == TRANSITIONS[action][0]
    assert (frozenset({Status.FAILED}), Status.AVAILABLE_AFTER_FAILURE) == TRANSITIONS[
        Action.RESET_FAILED
    ]
    assert (frozenset({Status.COMPLETED}), Status.AVAILABLE_AFTER_COMPLETION) == TRANSITIONS[
        Action.RESET_COMPLETED
    ]
    assert Status.RUNNING not in TRANSITIONS[Action.DISABLE_RECORD][0]
    assert {s for t in TRANSITIONS.values() for s in t[0]} | {
        t[1] for t in TRANSITIONS.values()
    } == set(PATHS)


def test_every_path_reaches_its_status_and_logs_each_step(backend: Backend, run: Run[None]) -> None:
    """Each allowed action moves the status and appends one history entry, oldest first."""
    store = _store(backend.subsystem("mail"))

    async def scenario() -> None:
        for status, path in PATHS.items():
            record = f"r-{status.value}"
            await _bring(store, record, status)
            assert status == await store.status(record)
            history = await store.history(record)
            assert list(path) == [entry.action for entry in history]
            assert [TRANSITIONS[a][1] for a in path] == [entry.status for entry in history]

    run(scenario())


def test_every_transition_outside_the_table_is_refused_and_writes_nothing(
    backend: Backend, run: Run[None]
) -> None:
    """Every (status, action) pair not in the table raises InvalidTransition naming the
    current status and leaves every key as it was; every pair in it lands on its status."""
    store = _store(backend.subsystem("mail"))
    client = backend.client()

    async def scenario() -> None:
        refused = allowed = 0
        for status in PATHS:
            for action, (sources, target) in TRANSITIONS.items():
                record = f"{status.value}-{action.value}"
                await _bring(store, record, status)
                if status in sources:
                    await store.apply(record, action)
                    assert target == await store.status(record)
                    allowed += 1
                    continue
                before = await _everything(client)
                with pytest.raises(InvalidTransition) as refusal:
                    await store.apply(record, action, details="should not be logged")
                assert (record, "email", status.value, action.value) == (
                    refusal.value.record,
                    refusal.value.concern,
                    refusal.value.current,
                    refusal.value.action,
                )
                assert f"its status is {status.value}" in str(refusal.value)
                assert before == await _everything(client)
                refused += 1
        in_table = sum(len(sources) for sources, _ in TRANSITIONS.values())
        assert (len(PATHS) * len(TRANSITIONS), in_table) == (refused + allowed, allowed)

    run(scenario())


def test_claim_skips_what_is_not_claimable_and_writes_nothing(
    backend: Backend, run: Run[None]
) -> None:
    """A claim of a record that is not Available reports SKIPPED with its status; no write."""
    store = _store(backend.subsystem("mail"))
    client = backend.client()

    async def scenario() -> None:
        for status in PATHS:
            await _bring(store, f"r-{status.value}", status)
        before = await _everything(client)
        blocked_out = [s for s in PATHS if s not in CLAIMABLE]
        results = await store.claim([(f"r-{s.value}", "") for s in blocked_out])
        assert [(Claim.SKIPPED, s) for s in blocked_out] == results
        assert before == await _everything(client)
        claimable = sorted(CLAIMABLE)
        results = await store.claim([(f"r-{s.value}", "") for s in claimable], actor="bot-1")
        assert [(Claim.CLAIMED, Status.RUNNING)] * len(claimable) == results
        history = await store.history(f"r-{Status.AVAILABLE_AFTER_FAILURE.value}")
        assert (Action.CLAIM, "bot-1") == (history[-1].action, history[-1].actor)

    run(scenario())


def test_reclaim_takes_over_a_running_record(backend: Backend, run: Run[None]) -> None:
    """Only with reclaim=True is a Running record claimed again, logged as a reclaim."""
    store = _store(backend.subsystem("mail"))

    async def scenario() -> None:
        assert [(Claim.CLAIMED, Status.RUNNING)] == await store.claim([("m1", "")], actor="a")
        assert [(Claim.SKIPPED, Status.RUNNING)] == await store.claim([("m1", "")], actor="b")
        assert [(Claim.CLAIMED, Status.RUNNING)] == await store.claim(
            [("m1", "")], actor="b", reclaim=True
        )
        history = await store.history("m1")
        assert [(Action.CLAIM, "a"), (Action.RECLAIM, "b")] == [
            (e.action, e.actor) for e in history
        ]

    run(scenario())


def test_a_replayed_claim_call_is_claimed_again_not_skipped(
    backend: Backend, run: Run[None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same claim call re-sent after a lost reply: CLAIMED again, nothing written twice.

    redis-py re-sends a command after a dropped connection; if the first send had run, the
    record is Running with this call's own history entry last. Skipping it would make the
    bot ack an entry it never handled. Another claimer (or a later call) is still refused,
    and a record twice in one call is claimed once.
    """
    store = _store(backend.subsystem("mail"))
    monkeypatch.setattr("streamcqrs.streams.handling.now_ms", lambda: 1_700_000_000_000)

    async def scenario() -> None:
        first = await store.claim([("m1", "")], actor="bot-1")
        replay = await store.claim([("m1", "")], actor="bot-1")
        other = await store.claim([("m1", "")], actor="bot-2")
        twice = await store.claim([("m2", ""), ("m2", "")], actor="bot-1")

        assert [(Claim.CLAIMED, Status.RUNNING)] == first == replay
        assert [(Claim.SKIPPED, Status.RUNNING)] == other
        assert [(Claim.CLAIMED, Status.RUNNING), (Claim.SKIPPED, Status.RUNNING)] == twice
        assert [Action.CLAIM] == [e.action for e in await store.history("m1")]

    run(scenario())


def test_details_tags_and_actor_are_kept(backend: Backend, run: Run[None]) -> None:
    """A failure's details, tags and actor are in the history entry, and survive packing."""
    store = _store(backend.subsystem("mail"))

    async def scenario() -> None:
        await store.claim([("m1", "")], actor="bot-7")
        await store.fail(
            "m1", "SMTP 550 mailbox unavailable", tags=[("smtp", "550")], actor="bot-7"
        )
        last = (await store.history("m1"))[-1]
        details, tags = "SMTP 550 mailbox unavailable", (("smtp", "550"),)
        expected = HistoryEntry(last.at_ms, Status.FAILED, Action.FAIL, details, tags, "bot-7")
        assert expected == last
        assert expected == HistoryEntry.from_bytes(expected.to_bytes())

    run(scenario())


def test_a_disabled_record_is_skipped_by_every_concern(backend: Backend, run: Run[None]) -> None:
    """Disabling a record stops claims in all concerns until it is enabled again."""
    sub = backend.subsystem("mail")
    email, audit = _store(sub, "email"), _store(sub, "audit")

    async def scenario() -> None:
        await email.disable_record("m1", details="poison message", actor="ops")
        assert Status.DISABLED_FOR_RECORD == await audit.status("m1")
        assert [(Claim.SKIPPED, Status.DISABLED_FOR_RECORD)] == await audit.claim([("m1", "")])
        assert [(Claim.SKIPPED, Status.DISABLED_FOR_RECORD)] == await email.claim([("m1", "")])
        with pytest.raises(InvalidTransition):
            await email.disable_record("m1")
        await email.enable_record("m1")
        assert Status.AVAILABLE_BY_DEFAULT == await audit.status("m1")
        assert [(Claim.CLAIMED, Status.RUNNING)] == await audit.claim([("m1", "")])
        switches = await email.switch_history()
        assert [Action.DISABLE_RECORD, Action.ENABLE_RECORD] == [s.action for s in switches]
        assert ("concern", "email") in switches[0].tags
        assert ("record", "m1") in switches[0].tags

    run(scenario())


def test_a_record_disabled_through_one_concern_is_enabled_through_any(
    backend: Backend, run: Run[None]
) -> None:
    """A record disabled through one concern is disabled in all (disabling it again through
    another is refused); enabled through another, it is available again in all, the enable
    logged where it was disabled; a second enable is refused."""
    sub = backend.subsystem("mail", partitions=2)
    email, slack, audit = _store(sub, "email"), _store(sub, "slack"), _store(sub, "audit")

    async def scenario() -> None:
        await email.disable_record("m1", object_id="order-1")
        with pytest.raises(InvalidTransition) as again:
            await slack.disable_record("m1", object_id="order-1")
        assert "DisabledForRecord" == again.value.current
        await audit.enable_record("m1", object_id="order-1", actor="ops")
        for store in (email, slack, audit):
            assert Status.AVAILABLE_BY_DEFAULT == await store.status("m1", "order-1")
            assert [(Claim.CLAIMED, Status.RUNNING)] == await store.claim([("m1", "order-1")])
        history = await email.history("m1", "order-1")
        assert [Action.DISABLE_RECORD, Action.ENABLE_RECORD, Action.CLAIM] == [
            e.action for e in history
        ]
        assert "ops" == history[1].actor
        assert [Action.CLAIM] == [e.action for e in await slack.history("m1", "order-1")]
        with pytest.raises(InvalidTransition) as refusal:
            await audit.enable_record("m1", object_id="order-1")
        assert "Running" == refusal.value.current

    run(scenario())


def test_a_disabled_stream_blocks_claims_for_its_concern_only(
    backend: Backend, run: Run[None]
) -> None:
    """While a stream is disabled for a concern, claims are BLOCKED there and nothing is set;
    other concerns claim as usual; switching twice the same way is refused."""
    sub = backend.subsystem("mail", partitions=3)
    email, audit = _store(sub, "email"), _store(sub, "audit")

    async def scenario() -> None:
        assert not await email.stream_disabled()
        await email.disable_stream(details="SMTP relay down", actor="ops")
        assert await email.stream_disabled()
        with pytest.raises(InvalidTransition) as twice:
            await email.disable_stream()
        assert Status.DISABLED_FOR_STREAM == twice.value.current
        records = [(f"m{n}", "") for n in range(6)]
        assert [(Claim.BLOCKED, Status.DISABLED_FOR_STREAM)] * 6 == await email.claim(records)
        assert Status.DISABLED_FOR_STREAM == await email.status("m0")
        assert [] == await email.history("m0")
        assert [(Claim.CLAIMED, Status.RUNNING)] * 6 == await audit.claim(records)
        blocked = await email.try_handle("email", "bot-1")
        assert (True, ()) == (blocked.blocked, blocked.records)
        await email.enable_stream()
        assert not await email.stream_disabled()
        with pytest.raises(InvalidTransition):
            await email.enable_stream()
        assert [(Claim.CLAIMED, Status.RUNNING)] * 6 == await email.claim(records)
        switches = await email.switch_history()
        assert [Action.DISABLE_STREAM, Action.ENABLE_STREAM] == [s.action for s in switches]
        assert "SMTP relay down" == switches[0].details

    run(scenario())


def test_try_handle_claims_new_entries_and_acks_the_skipped(
    backend: Backend, run: Run[None]
) -> None:
    """try_handle creates the group, claims available records, acks the ones not claimable,
    and leaves the claimed ones pending for the commit that records their outcome."""
    sub = backend.subsystem("mail", partitions=2)
    writer = sub.writer(OPS)
    store = _store(sub)
    client = backend.client()

    async def scenario() -> None:
        puts = [await writer.put(Ping(n=n), object_id=f"obj-{n}", message_id=f"id{n}")
                for n in range(4)]  # fmt: skip
        await store.claim([("id1", "obj-1")])
        await store.complete("id1", object_id="obj-1")
        got = await store.try_handle("email", "bot-1", count=10)
        assert (False, ()) == (got.blocked, got.invalid)
        assert [Ping(n=0), Ping(n=2), Ping(n=3)] == sorted(
            (r.message for r in got.records), key=lambda m: m.n if isinstance(m, Ping) else -1
        )
        assert (("id1", Status.COMPLETED),) == got.skipped
        for n in (0, 2, 3):
            assert Status.RUNNING == await store.status(f"id{n}", f"obj-{n}")
        pending = 0
        for part in sub.keys.all():
            pending += (await client.xpending(part.stream(OPS), "email"))["pending"]
        assert 3 == pending
        again = await store.try_handle("email", "bot-2", count=10)
        assert ((), ()) == (again.records, again.skipped)
        assert 4 == len(puts)

    run(scenario())


def test_try_handle_leaves_an_undecodable_entry_pending_and_goes_on(
    backend: Backend, run: Run[None]
) -> None:
    """An entry that is not an envelope is reported in ``invalid``, not claimed nor acked
    (the dead-letter path takes it from the pending list); the good entries are claimed."""
    sub = backend.subsystem("mail")
    writer = sub.writer(OPS)
    store = _store(sub)
    client = backend.client()
    stream = sub.keys.partition(0).stream(OPS)

    async def scenario() -> None:
        await writer.put(Ping(n=1), message_id="good1")
        junk = as_str(await client.xadd(stream, {"not": "an envelope"}))
        await writer.put(Ping(n=2), message_id="good2")
        got = await store.try_handle("email", "bot-1", count=10)
        assert [Ping(n=1), Ping(n=2)] == [r.message for r in got.records]
        assert [junk] == [error.entry_id for error in got.invalid]
        pending = await client.xpending_range(stream, "email", min="-", max="+", count=10)
        assert 3 == len(pending)

    run(scenario())


def test_a_bot_commit_changes_status_with_its_outputs_or_not_at_all(
    backend: Backend, run: Run[None]
) -> None:
    """transition() joins a commit batch: a refused change refuses the outputs with it."""
    sub = backend.subsystem("mail")
    store = _store(sub)
    client = backend.client()
    part = sub.keys.partition(0)
    events = sub.writer(Kind.EVENTS)

    async def scenario() -> None:
        await store.claim([("m1", "")])
        batch = Batch()
        batch.put(part, Kind.EVENTS, events.envelope(Ping(n=1), object_id="x"))
        transition(batch, part, OPS, "email", "m1", Action.COMPLETE, details="sent")
        await batch.run(client)
        assert Status.COMPLETED == await store.status("m1")
        assert 1 == await client.xlen(part.stream(Kind.EVENTS))
        before = await _everything(client)
        batch = Batch()
        batch.put(part, Kind.EVENTS, events.envelope(Ping(n=2), object_id="x"))
        transition(batch, part, OPS, "email", "m1", Action.COMPLETE)
        with pytest.raises(InvalidTransition) as refusal:
            await batch.run(client)
        assert "Completed" == refusal.value.current
        assert before == await _everything(client)
        with pytest.raises(ConfigurationError):
            transition(Batch(), part, OPS, "email", "m1", Action.DISABLE_STREAM)

    run(scenario())


def test_status_lives_in_the_partition_of_the_object(backend: Backend, run: Run[None]) -> None:
    """A record put with an object id keeps its status in that object's partition."""
    sub = backend.subsystem("mail", partitions=4)
    store = _store(sub)
    client = backend.client()

    async def scenario() -> None:
        await store.claim([("m1", "order-9"), ("m2", "")])
        at_object = sub.keys.for_object("order-9").handling_status(OPS, "email")
        at_message = sub.keys.for_object("m2").handling_status(OPS, "email")
        assert b"Running" == await client.hget(at_object, "m1")
        assert b"Running" == await client.hget(at_message, "m2")
        assert Status.RUNNING == await store.status("m1", "order-9")

    run(scenario())


def test_composite_answers_over_ids_and_over_a_tag(backend: Backend, run: Run[None]) -> None:
    """Counts per status and all-completed / any-failed / any-running / all-done, over ids
    or over the records tagged name=value."""
    sub = backend.subsystem("mail", partitions=2)
    writer = sub.writer(OPS)
    store = _store(sub)

    async def scenario() -> None:
        ids = []
        for n in range(4):
            put = await writer.put(Ping(n=n), tags=[("to", "ann@example.com")], message_id=f"a{n}")
            assert put.written
            ids.append(f"a{n}")
        await writer.put(Ping(n=9), tags=[("to", "bob@example.com")], message_id="b0")
        await store.claim([(i, "") for i in ids])
        await store.complete("a0")
        await store.complete("a1")
        await store.fail("a2", "bounced")
        mixed = await store.composite_by_tag("to", "ann@example.com")
        assert {Status.COMPLETED: 2, Status.FAILED: 1, Status.RUNNING: 1} == dict(mixed.counts)
        assert (4, False, True, True, False) == (
            mixed.total, mixed.all_completed, mixed.any_failed, mixed.any_running, mixed.all_done,
        )  # fmt: skip
        await store.archive_failure("a2")
        await store.complete("a3")
        done = await store.composite(ids)
        assert (False, False, False, True) == (
            done.all_completed, done.any_failed, done.any_running, done.all_done,
        )  # fmt: skip
        assert 3 == done.count(Status.COMPLETED)
        assert {Status.AVAILABLE_BY_DEFAULT: 1} == dict(
            (await store.composite_by_tag("to", "bob@example.com")).counts
        )
        assert Composite() == await store.composite_by_tag("to", "nobody@example.com")
        assert (0, True, False) == (Composite().total, Composite().all_done, Composite().any_failed)

    run(scenario())


def test_a_concern_name_that_breaks_keys_is_refused(backend: Backend) -> None:
    """Concern names become key parts and flag fields: colons and braces are refused."""
    sub = backend.subsystem("mail")
    for bad in ("", "a:b", "{x}", "a b"):
        with pytest.raises(ConfigurationError):
            HandlingStore(sub.client, sub.keys, OPS, bad)
