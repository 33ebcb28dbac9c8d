"""Exclusive access: leases, the commit's fence, and handlers that never overlap per key.

A lease is held by one token at a time and expires unless renewed; a commit fenced by a lease
writes nothing unless its token still holds it (and releases it when it does); an exclusive
handler run by many bots at once never runs twice at the same time, and one whose lease was
taken from it mid-run writes nothing and runs again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streamcqrs.handlers.context import IntentOutput
from streamcqrs.handlers.exclusive import Exclusive
from streamcqrs.streams import Commit, Subsystem, SubsystemKeys
from streamcqrs.streams.errors import LeaseLost
from streamcqrs.streams.leases import Lease
from tests.deferred_support import running, until
from tests.deferredapps import RUNNING, Count, Counted, Counter, desk
from tests.support import Backend, Run

PART = SubsystemKeys("desk").partition(0)
COUNTER_LEASE = PART.lease("desk-counter")


def test_a_lease_has_one_holder_and_expires_unless_renewed(real: Backend, run: Run[None]) -> None:
    """take by a second token fails while the first holds it; the holder may take it again;
    release by a non-holder frees nothing; an unrenewed lease expires after its ttl."""

    async def scenario() -> None:
        client = real.client()
        first = Lease(client, "lease:x", "first", 300)
        second = Lease(client, "lease:x", "second", 300)
        assert await first.take()
        assert not await second.take()
        assert await first.take()  # its own: renewed, not refused
        assert not await second.release()
        assert "first" == await first.holder()
        assert await second.wait(2.0)  # the first stops renewing: its lease expires
        assert "second" == await first.holder()
        assert not await first.renew()
        assert await second.release()
        assert await first.holder() is None

    run(scenario())


def test_a_fenced_commit_writes_only_while_its_lease_holds(real: Backend, run: Run[None]) -> None:
    """A commit fenced by a lease another token holds (or nobody does) is refused with
    LeaseLost and writes nothing; fenced by its own lease it writes and releases the lease."""

    async def scenario() -> None:
        client = real.client()
        mine = Lease(client, COUNTER_LEASE, "mine", 5000)

        def fenced() -> Commit:
            commit = Commit()
            commit.delete("untouched-marker")
            commit.receipt("written", {"by": "fenced"})
            commit.fence(COUNTER_LEASE, "mine")
            return commit

        await client.set("untouched-marker", "here")
        with pytest.raises(LeaseLost):
            await fenced().run(client)  # nobody holds it
        await client.set(COUNTER_LEASE, "theirs", px=5000)
        with pytest.raises(LeaseLost):
            await fenced().run(client)  # someone else holds it
        assert (b"here", 0) == (await client.get("untouched-marker"),
                                await client.exists("written"))  # fmt: skip
        await client.delete(COUNTER_LEASE)
        assert await mine.take()
        await fenced().run(client)
        assert (None, {b"by": b"fenced"}) == (await client.get("untouched-marker"),
                                              await client.hgetall("written"))  # fmt: skip
        assert await mine.holder() is None  # the commit released it

    run(scenario())


def test_an_exclusive_handler_never_overlaps_across_bots(real: Backend, run: Run[None]) -> None:
    """Two bots (64 handler slots each) handle 150 Count operations whose handler reads a
    counter, waits, and writes the next value: at most one runs at any moment, and the
    values are 1..150 with no duplicate and no conflict re-run needed."""
    RUNNING.update(now=0, most=0)

    async def scenario() -> None:
        client = real.client()
        desk_sub = Subsystem("desk", client)
        writer = desk_sub.writer("client-ops")
        for n in range(150):
            await writer.put(Count(n=n), object_id=f"n-{n}")
        store = desk_sub.aggregates(Counter)
        async with running(desk, real.url or "", consumer="one"), \
                running(desk, real.url or "", consumer="two"):  # fmt: skip

            async def counted() -> bool:
                return await store.version("counter") >= 150

            await until(counted, "150 counts", 60)
        events = await store.events("counter")
        values = [r.message.value for r in events if isinstance(r.message, Counted)]
        assert list(range(1, 151)) == values
        assert list(range(150)) == sorted(r.message.n for r in events
                                          if isinstance(r.message, Counted))  # fmt: skip
        assert 0 == await client.exists(COUNTER_LEASE)

    run(scenario())
    assert 1 == RUNNING["most"]


def test_a_handler_that_lost_its_lease_writes_nothing_and_runs_again(
    real: Backend, run: Run[None]
) -> None:
    """While a Count handler waits, its lease is taken from it (as when it runs past the
    ttl and another bot takes the key): its commit is refused, nothing is written, and it
    runs again under a new lease once the intruder's lease expires: one Counted, value 1."""

    async def scenario() -> None:
        client = real.client()
        desk_sub = Subsystem("desk", client)
        async with running(desk, real.url or ""):
            await desk_sub.writer("client-ops").put(Count(n=7, pause=0.6), object_id="n-7")

            async def held() -> bool:
                return bool(await client.exists(COUNTER_LEASE))

            await until(held, "the handler to take its lease", 10)
            await client.set(COUNTER_LEASE, "intruder", px=800)
            await asyncio.sleep(0.7)  # the first run's commit has been refused by now
            store = desk_sub.aggregates(Counter)
            assert 0 == await store.version("counter")

            async def counted() -> bool:
                return await store.version("counter") >= 1

            await until(counted, "the re-run's commit", 10)
            await asyncio.sleep(0.3)
            events = await store.events("counter")
        assert [(7, 1)] == [(r.message.n, r.message.value) for r in events
                            if isinstance(r.message, Counted)]  # fmt: skip

    run(scenario())


def test_exclusive_keys_are_checked_when_declared() -> None:
    """A key with a colon, or a ttl under 0.1 s, is refused where it is declared."""
    with pytest.raises(ValueError, match="colons"):
        Exclusive("a:b")
    with pytest.raises(ValueError, match=r"at least 0\.1 s"):
        Exclusive("ok", ttl=0.01)


def test_intent_outputs_fill_the_commit() -> None:
    """An IntentOutput adds whatever its function adds (here a fence) to the commit."""
    commit = Commit()
    IntentOutput(lambda c: c.fence("k", "t")).fill(commit)
    expected: list[Any] = ["BEGIN", 1, "k", "LEASE", 1, "t"]
    assert expected == commit.args()
