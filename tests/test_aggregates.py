"""Aggregates: versioned appends, idempotent retries, snapshot loading and upcasting.

Every test runs on a real server and on the in-memory mode (fakeredis).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio

from streamcqrs.domain import Aggregate, Event, TypeRegistry, message
from streamcqrs.domain.errors import ConcurrencyConflict
from streamcqrs.streams import Commit, Kind, OnExisting, Subsystem
from streamcqrs.streams.aggregates import snapshot_envelope
from streamcqrs.streams.errors import DuplicateRecord
from tests.messages import Account, Deposited, Opened
from tests.support import Backend, Run


async def _raw_state(client: redis.asyncio.Redis, sub: Subsystem, aggregate_id: str) -> Any:
    """Everything an append writes: the aggregate's list and the events stream."""
    part = sub.keys.for_object(aggregate_id)
    events = part.stream(Kind.EVENTS)
    own = part.aggregate(aggregate_id)
    return (
        await client.lrange(own, 0, -1),
        await client.xlen(events),
        await client.xrange(events),
        await client.hgetall(part.index(Kind.EVENTS)),
    )


def test_appends_advance_the_version(backend: Backend, run: Run[None]) -> None:
    """Each event adds one to the version; events also reach the subsystem's event stream."""
    sub = backend.subsystem("bank", partitions=2)
    store = sub.aggregates(Account)
    events = sub.reader("events")

    async def scenario() -> None:
        first = await store.append("acct-1", [Opened(owner="ann")], expected_version=0)
        second = await store.append(
            "acct-1", [Deposited(amount=10), Deposited(amount=5)], expected_version=1
        )

        assert (1, True, 1) == (first.version, first.written, len(first.entry_ids))
        assert (3, True, 2) == (second.version, second.written, len(second.entry_ids))
        assert 3 == await store.version("acct-1")
        assert 0 == await store.version("acct-unknown")
        published = await events.read()
        assert [Opened(owner="ann"), Deposited(amount=10), Deposited(amount=5)] == [
            r.message for r in published
        ]
        assert [1, 2, 3] == [r.envelope.seq for r in published]
        assert {"acct-1"} == {r.object_id for r in published}
        latest = await events.latest("acct-1")
        assert latest is not None
        assert Deposited(amount=5) == latest.message

    run(scenario())


def test_a_stale_expected_version_conflicts_and_writes_nothing(
    backend: Backend, run: Run[None]
) -> None:
    """Appending at a version the aggregate has moved past raises ConcurrencyConflict."""
    sub = backend.subsystem("bank")
    store = sub.aggregates(Account)
    client = backend.client()

    async def scenario() -> None:
        await store.append("acct-1", [Opened(owner="ann")], expected_version=0)
        await store.append("acct-1", [Deposited(amount=10)], expected_version=1)
        before = await _raw_state(client, sub, "acct-1")

        with pytest.raises(ConcurrencyConflict) as conflict:
            await store.append(
                "acct-1", [Deposited(amount=1), Deposited(amount=2)], expected_version=1
            )

        assert ("acct-1", 1, 2) == (
            conflict.value.aggregate_id,
            conflict.value.expected,
            conflict.value.actual,
        )
        assert "reload" in str(conflict.value)
        assert before == await _raw_state(client, sub, "acct-1")

    run(scenario())


def test_a_new_aggregate_expected_at_a_later_version_conflicts(
    backend: Backend, run: Run[None]
) -> None:
    """An aggregate with no events is at version 0; expecting 3 conflicts and writes nothing."""
    sub = backend.subsystem("bank")
    store = sub.aggregates(Account)
    client = backend.client()

    async def scenario() -> None:
        before = await _raw_state(client, sub, "acct-1")
        with pytest.raises(ConcurrencyConflict) as conflict:
            await store.append("acct-1", [Opened(owner="ann")], expected_version=3)

        assert (3, 0) == (conflict.value.expected, conflict.value.actual)
        assert before == await _raw_state(client, sub, "acct-1")

    run(scenario())


def test_concurrent_appends_at_one_version_let_exactly_one_win(
    backend: Backend, run: Run[None]
) -> None:
    """Two writers appending at the same expected version: one writes, one conflicts."""
    sub = backend.subsystem("bank")
    stores = [backend.subsystem("bank").aggregates(Account) for _ in range(2)]

    async def scenario() -> None:
        await stores[0].append("acct-1", [Opened(owner="ann")], expected_version=0)
        outcomes = await asyncio.gather(
            *(s.append("acct-1", [Deposited(amount=k)], expected_version=1) for k, s in
              enumerate(stores, start=1)),
            return_exceptions=True,
        )  # fmt: skip

        written = [o for o in outcomes if not isinstance(o, BaseException)]
        conflicts = [o for o in outcomes if isinstance(o, ConcurrencyConflict)]
        assert (1, 1) == (len(written), len(conflicts))
        assert 2 == await sub.aggregates(Account).version("acct-1")

    run(scenario())


def test_no_expected_version_appends_without_a_check(backend: Backend, run: Run[None]) -> None:
    """expected_version=None appends at whatever version the aggregate is."""
    store = backend.subsystem("bank").aggregates(Account)

    async def scenario() -> None:
        await store.append("acct-1", [Opened(owner="ann")], expected_version=None)
        done = await store.append("acct-1", [Deposited(amount=3)], expected_version=None)

        assert (2, True) == (done.version, done.written)

    run(scenario())


def test_a_repeated_event_id_returns_the_original_entry(backend: Backend, run: Run[None]) -> None:
    """Retrying an append of the same envelopes writes nothing and returns the first entries.

    The retry still succeeds when the aggregate has moved on (its expected version is now
    stale): the events are already in, which is what the caller wanted.
    """
    sub = backend.subsystem("bank")
    store = sub.aggregates(Account)
    client = backend.client()

    async def scenario() -> None:
        envelopes = store.envelopes("acct-1", [Opened(owner="ann"), Deposited(amount=7)])
        first = await store.append("acct-1", envelopes, expected_version=0)
        before = await _raw_state(client, sub, "acct-1")

        retry = await store.append("acct-1", envelopes, expected_version=0)

        assert (2, first.entry_ids, False) == (retry.version, retry.entry_ids, retry.written)
        assert before == await _raw_state(client, sub, "acct-1")
        assert 7 == (await store.load("acct-1")).balance

    run(scenario())


def test_an_append_repeating_only_some_event_ids_is_refused_whole(
    backend: Backend, run: Run[None]
) -> None:
    """Old ids mixed with new ones: DuplicateRecord, and neither the new nor old is written."""
    sub = backend.subsystem("bank")
    store = sub.aggregates(Account)
    client = backend.client()

    async def scenario() -> None:
        envelopes = store.envelopes("acct-1", [Opened(owner="ann"), Deposited(amount=7)])
        await store.append("acct-1", envelopes, expected_version=0)
        before = await _raw_state(client, sub, "acct-1")
        extra = store.envelopes("acct-1", [Deposited(amount=5)])

        with pytest.raises(DuplicateRecord, match="repeats 2 of its 3 event ids"):
            await store.append("acct-1", [*envelopes, *extra], expected_version=2)

        assert before == await _raw_state(client, sub, "acct-1")
        assert 7 == (await store.load("acct-1")).balance

    run(scenario())


def test_load_folds_every_event(backend: Backend, run: Run[None]) -> None:
    """load without a snapshot equals folding the stored events from a fresh aggregate."""
    store = backend.subsystem("bank").aggregates(Account)

    async def scenario() -> None:
        history: list[Event] = [Opened(owner="ann"), Deposited(amount=10), Deposited(amount=5)]
        await store.append("acct-1", history, expected_version=0)

        loaded = await store.load("acct-1")

        assert Account(id="acct-1").fold(history) == loaded
        assert (3, 15, "ann") == (loaded.version, loaded.balance, loaded.owner)
        assert Account(id="nobody") == await store.load("nobody")

    run(scenario())


def test_load_is_the_latest_snapshot_plus_the_events_after_it(
    backend: Backend, run: Run[None]
) -> None:
    """Events before the snapshot are not read: a snapshot that disagrees with them wins.

    The snapshot stored here says the balance was 1000 at version 3, while the events up to
    version 3 add up to 15. Loading gives 1000 plus the one event after the snapshot, so the
    events before it were not folded; loading without the snapshot folds them all.
    """
    sub = backend.subsystem("bank")
    store = sub.aggregates(Account)

    async def scenario() -> None:
        history: list[Event] = [Opened(owner="ann"), Deposited(amount=10), Deposited(amount=5)]
        await store.append("acct-1", history, expected_version=0)
        marker = Account(id="acct-1", owner="ann", balance=1000, version=3)
        assert await store.snapshot(marker) is not None
        await store.append("acct-1", [Deposited(amount=100)], expected_version=3)

        loaded = await store.load("acct-1")
        replayed = await store.load("acct-1", use_snapshot=False)

        assert (4, 1100) == (loaded.version, loaded.balance)
        assert Account(id="acct-1").fold([*history, Deposited(amount=100)]) == replayed
        assert (4, 115) == (replayed.version, replayed.balance)

    run(scenario())


def test_a_snapshot_of_a_stale_state_is_skipped(backend: Backend, run: Run[None]) -> None:
    """snapshot() of a state behind the stored events stores nothing and returns None."""
    sub = backend.subsystem("bank")
    store = sub.aggregates(Account)

    async def scenario() -> None:
        await store.append("acct-1", [Opened(owner="ann")], expected_version=0)
        stale = await store.load("acct-1")
        await store.append("acct-1", [Deposited(amount=1)], expected_version=1)

        assert None is await store.snapshot(stale)
        assert None is await store.snapshot(Account(id="never-appended"))
        assert 0 == await sub.reader("snapshots").length()
        assert 1 == (await store.load("acct-1")).balance

    run(scenario())


def test_snapshots_keep_only_the_newest_per_aggregate(backend: Backend, run: Run[None]) -> None:
    """Each new snapshot prunes the older ones of that aggregate (keep=1)."""
    sub = backend.subsystem("bank")
    store = sub.aggregates(Account)

    async def scenario() -> None:
        for version in range(3):
            await store.append("acct-1", [Deposited(amount=1)], expected_version=version)
            await store.snapshot(await store.load("acct-1"))

        snapshots = await sub.reader("snapshots").read()
        assert 1 == len(snapshots)
        assert 3 == (await store.load("acct-1")).balance

    run(scenario())


class Wallet(Aggregate):
    """An aggregate whose event schema changed from whole units (v1) to cents (v2)."""

    cents: int = 0

    def apply(self, event: Event) -> None:
        """Add a top-up, which must already be in the current (v2) shape."""
        assert isinstance(event, TopUpV2)
        self.cents += event.cents


class TopUpV1(Event):
    """The event as an old release of the code defined it: whole units."""

    units: int


class TopUpV2(Event):
    """The event as it is now: cents, and where the money came from."""

    cents: int
    source: str


def test_an_upcaster_lifts_a_stored_v1_event_on_load(backend: Backend, run: Run[None]) -> None:
    """Events written by an old release at schema 1 load as schema 2 through the upcaster."""
    old_types, new_types = TypeRegistry(), TypeRegistry()
    message("wallet.ToppedUp", version=1, into=old_types)(TopUpV1)
    message("wallet.ToppedUp", version=2, into=new_types)(TopUpV2)

    @new_types.upcaster("wallet.ToppedUp", from_version=1)
    def units_to_cents(payload: dict[str, Any]) -> dict[str, Any]:
        return {"cents": payload["units"] * 100, "source": "unknown"}

    old = Subsystem("wallet", backend.client(), types=old_types).aggregates(Wallet)
    new = Subsystem("wallet", backend.client(), types=new_types).aggregates(Wallet)

    async def scenario() -> None:
        await old.append("w-1", [TopUpV1(units=3)], expected_version=0)
        await new.append("w-1", [TopUpV2(cents=50, source="card")], expected_version=1)

        stored = await new.events("w-1")
        loaded = await new.load("w-1")

        assert [1, 2] == [r.envelope.schema for r in stored]
        assert [TopUpV2(cents=300, source="unknown"), TopUpV2(cents=50, source="card")] == [
            r.message for r in stored
        ]
        assert (2, 350) == (loaded.version, loaded.cents)

    run(scenario())


def test_loads_at_every_version_equal_folding_the_first_events_whatever_snapshots_exist(
    backend: Backend, run: Run[None]
) -> None:
    """For k = 0..6, load(at_version=k) equals folding the first k events, with no snapshot,
    and with the latest snapshot before, at, or after k (a later one is not used)."""
    sub = backend.subsystem("bank")
    store = sub.aggregates(Account)
    events: list[Event] = [Opened(owner="ann"), *(Deposited(amount=n) for n in (1, 2, 4, 8, 16))]

    async def scenario() -> None:
        await store.append("acct-1", events, expected_version=0)
        for snapshot_at in (None, 2, 4, 6):
            if snapshot_at is not None:
                state = Account(id="acct-1").fold(events[:snapshot_at])
                # The store refuses a stale snapshot; write one at that version as a
                # handler's commit would have when the aggregate stood there.
                commit = Commit()
                commit.put(sub.keys, Kind.SNAPSHOTS, snapshot_envelope(state),
                           on_existing=OnExisting.PRUNE)  # fmt: skip
                await commit.run(sub.client)
            for k in range(len(events) + 1):
                expected = Account(id="acct-1").fold(events[:k])
                assert expected == await store.load("acct-1", at_version=k), (snapshot_at, k)

    run(scenario())


def test_a_load_at_a_time_takes_the_events_committed_by_then(
    backend: Backend, run: Run[None]
) -> None:
    """Three appends a few ms apart: load(at_time=t) folds the events committed at or before t
    (by their entry in the events stream), snapshot or not."""
    sub = backend.subsystem("bank")
    store = sub.aggregates(Account)

    async def scenario() -> None:
        moments = []
        for n, event in enumerate([Opened(owner="ann"), Deposited(amount=10), Deposited(amount=5)]):
            result = await store.append("acct-1", [event], expected_version=n)
            moments.append(int(result.entry_ids[0].split("-")[0]))
            await asyncio.sleep(0.005)
        await store.snapshot(await store.load("acct-1"))
        assert 0 == (await store.load("acct-1", at_time=moments[0] - 1)).version
        for n, moment in enumerate(moments):
            loaded = await store.load("acct-1", at_time=moment)
            assert n + 1 == loaded.version
            assert loaded == await store.load("acct-1", at_version=n + 1)

    run(scenario())


def test_a_snapshot_in_a_commit_that_fails_is_not_stored(backend: Backend, run: Run[None]) -> None:
    """A commit appending at a stale version with a snapshot of the result is refused whole:
    no event and no snapshot; the same commit at the right version stores both, and a
    snapshot of a state the aggregate has moved past is skipped, not stored."""
    sub = backend.subsystem("bank")
    store = sub.aggregates(Account)

    async def scenario() -> None:
        await store.append("acct-1", [Opened(owner="ann")], expected_version=0)
        account = await store.load("acct-1")
        envelopes = store.envelopes("acct-1", [Deposited(amount=5)])
        account.apply(Deposited(amount=5))
        account.version = 2
        stale = Commit()
        stale.append(sub.keys, "acct-1", envelopes, 0)  # the aggregate is at 1
        stale.snapshot(sub.keys, snapshot_envelope(account), account.version)
        with pytest.raises(ConcurrencyConflict):
            await stale.run(sub.client)
        assert (1, None) == (await store.version("acct-1"), await sub.snapshot(Account, "acct-1"))
        right = Commit()
        right.append(sub.keys, "acct-1", envelopes, 1)
        right.snapshot(sub.keys, snapshot_envelope(account), account.version)
        await right.run(sub.client)
        assert account == await sub.snapshot(Account, "acct-1")
        behind = Commit()
        behind.snapshot(sub.keys, snapshot_envelope(Account(id="acct-1", version=1)), 1)
        assert [[None, 0]] == await behind.run(sub.client)  # skipped: nil entry, not written
        latest = await sub.snapshot(Account, "acct-1")
        assert latest is not None and 2 == latest.version

    run(scenario())
