"""The handling store: Naos's transition table, switches, history, composites, replays.

Every test runs on a real server and on the in-memory mode (fakeredis).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.streams import Commit, Kind, Subsystem
from streamcqrs.streams.envelope import as_str
from streamcqrs.streams.errors import InvalidTransition
from streamcqrs.streams.handling import HandlingStore
from streamcqrs.streams.statuses import (
    CLAIMABLE,
    STORED_FROM,
    TRANSITIONS,
    Action,
    Composite,
    HistoryEntry,
    Status,
    decode_stored,
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
    """Every (stored status, action) pair not in the stored table raises InvalidTransition
    naming the current status and leaves every key as it was; every pair in it lands on its
    status."""
    store = _store(backend.subsystem("mail"))
    client = backend.client()

    async def scenario() -> None:
        refused = allowed = 0
        for status in PATHS:
            for action, (_, target) in TRANSITIONS.items():
                record = f"{status.value}-{action.value}"
                await _bring(store, record, status)
                if status in STORED_FROM[action]:
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
        in_table = sum(len(allowed) for allowed in STORED_FROM.values())
        assert (len(PATHS) * len(TRANSITIONS), in_table) == (refused + allowed, allowed)

    run(scenario())


def test_a_bot_outcome_settles_from_any_claimable_status_and_is_refused_when_settled(
    backend: Backend, run: Run[None]
) -> None:
    """Bots store no Running (the pending entry is the claim): complete, retry, self-cancel
    and fail start from any Available status, or from a stored Running; a record already
    Completed, Failed, archived or disabled refuses them and nothing is written."""
    store = _store(backend.subsystem("mail"))
    client = backend.client()

    async def scenario() -> None:
        for status in PATHS:
            await _bring(store, f"r-{status.value}", status)
        for status in PATHS:
            record = f"r-{status.value}"
            if status in CLAIMABLE or status is Status.RUNNING:
                await store.complete(record, actor="bot-1")
                assert Status.COMPLETED == await store.status(record)
                continue
            before = await _everything(client)
            with pytest.raises(InvalidTransition):
                await store.complete(record, actor="bot-1")
            assert before == await _everything(client)
        outcomes = {Action.COMPLETE, Action.FAIL, Action.RETRY, Action.SELF_CANCEL,
                    Action.EXTERNAL_CANCEL}  # fmt: skip
        for action, allowed in STORED_FROM.items():
            logical = TRANSITIONS[action][0]
            assert (logical | CLAIMABLE if action in outcomes else logical) == allowed

    run(scenario())


def test_a_status_change_sent_twice_as_a_replay_succeeds_once(
    backend: Backend, run: Run[None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py re-sends a command after a lost reply: the same change (same entry, same
    time) run again finds its own history entry last and succeeds without writing; a later,
    different change is still refused."""
    store = _store(backend.subsystem("mail"))
    monkeypatch.setattr("streamcqrs.streams.commit.now_ms", lambda: 1_700_000_000_000)

    async def scenario() -> None:
        await store.complete("m1", actor="bot-1")
        await store.complete("m1", actor="bot-1")
        assert [Action.COMPLETE] == [e.action for e in await store.history("m1")]
        with pytest.raises(InvalidTransition):
            await store.complete("m1", actor="bot-2")

    run(scenario())


def test_details_tags_and_actor_are_kept(backend: Backend, run: Run[None]) -> None:
    """A failure's details, tags and actor are in the history entry, and survive packing."""
    store = _store(backend.subsystem("mail"))

    async def scenario() -> None:
        await store.apply("m1", Action.CLAIM, actor="bot-7")
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
        assert Status.DISABLED_FOR_RECORD == await email.status("m1")
        with pytest.raises(InvalidTransition):
            await email.disable_record("m1")
        await email.enable_record("m1")
        assert Status.AVAILABLE_BY_DEFAULT == await audit.status("m1")
        await audit.complete("m1")
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
            await store.apply("m1", Action.CLAIM, object_id="order-1")
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


def test_a_disabled_stream_shows_for_its_concern_only(backend: Backend, run: Run[None]) -> None:
    """While a stream is disabled for a concern its records show DisabledForStream there
    (bots leave them pending) and nothing is set; other concerns see their own statuses;
    switching twice the same way is refused."""
    sub = backend.subsystem("mail", partitions=3)
    email, audit = _store(sub, "email"), _store(sub, "audit")

    async def scenario() -> None:
        assert not await email.stream_disabled()
        await email.disable_stream(details="SMTP relay down", actor="ops")
        assert await email.stream_disabled()
        with pytest.raises(InvalidTransition) as twice:
            await email.disable_stream()
        assert Status.DISABLED_FOR_STREAM == twice.value.current
        records = [f"m{n}" for n in range(6)]
        assert {Status.DISABLED_FOR_STREAM: 6} == dict((await email.composite(records)).counts)
        assert [] == await email.history("m0")
        assert {Status.AVAILABLE_BY_DEFAULT: 6} == dict((await audit.composite(records)).counts)
        await email.enable_stream()
        assert not await email.stream_disabled()
        with pytest.raises(InvalidTransition):
            await email.enable_stream()
        assert {Status.AVAILABLE_BY_DEFAULT: 6} == dict((await email.composite(records)).counts)
        switches = await email.switch_history()
        assert [Action.DISABLE_STREAM, Action.ENABLE_STREAM] == [s.action for s in switches]
        assert "SMTP relay down" == switches[0].details

    run(scenario())


def test_a_bot_commit_changes_status_with_its_outputs_or_not_at_all(
    backend: Backend, run: Run[None]
) -> None:
    """A settle joins a commit: a refused change refuses the outputs with it."""
    sub = backend.subsystem("mail")
    store = _store(sub)
    client = backend.client()
    part = sub.keys.partition(0)
    events = sub.writer(Kind.EVENTS)
    record = (part, OPS, "email", "m1")

    async def scenario() -> None:
        commit = Commit()
        commit.put(sub.keys, Kind.EVENTS, events.envelope(Ping(n=1), object_id="x"))
        commit.settle(Action.COMPLETE, details="sent", record=record)
        await commit.run(client)
        assert Status.COMPLETED == await store.status("m1")
        assert 1 == await client.xlen(part.stream(Kind.EVENTS))
        before = await _everything(client)
        commit = Commit()
        commit.put(sub.keys, Kind.EVENTS, events.envelope(Ping(n=2), object_id="x"))
        commit.settle(Action.COMPLETE, record=record)
        with pytest.raises(InvalidTransition) as refusal:
            await commit.run(client)
        assert "Completed" == refusal.value.current
        assert before == await _everything(client)
        with pytest.raises(ConfigurationError):
            Commit().settle(Action.DISABLE_STREAM, record=record)

    run(scenario())


def test_status_lives_in_the_partition_of_the_object(backend: Backend, run: Run[None]) -> None:
    """A record put with an object id keeps its status in that object's partition."""
    sub = backend.subsystem("mail", partitions=4)
    store = _store(sub)
    client = backend.client()

    async def scenario() -> None:
        await store.apply("m1", Action.CLAIM, object_id="order-9")
        await store.apply("m2", Action.CLAIM)
        at_object = sub.keys.for_object("order-9").handling_status(OPS, "email")
        at_message = sub.keys.for_object("m2").handling_status(OPS, "email")
        assert Status.RUNNING == decode_stored(await client.hget(at_object, "m1"))[0]
        assert Status.RUNNING == decode_stored(await client.hget(at_message, "m2"))[0]
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
        for record in ids:
            await store.apply(record, Action.CLAIM)
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
