"""The commit the bot runtime relies on: ownership, touch, outbox routing, many per call.

A commit for an input is all-or-nothing on "this consumer still owns its entry": a bot that
lost its entry to XAUTOCLAIM writes nothing. ``touch`` keeps (or releases) a claim. A commit
built for a cluster partition routes outputs for other slots into the partition's outbox.
Many commits travel in one script call, each checked and applied on its own.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import redis

from streamcqrs.domain.errors import ConcurrencyConflict
from streamcqrs.streams.commit import Commit, Input, OnExisting, run_commits
from streamcqrs.streams.envelope import as_str, encode, entries
from streamcqrs.streams.errors import DuplicateRecord, NotOwner
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.scripts import script
from tests.messages import Opened, Ping
from tests.support import Backend

KEYS = SubsystemKeys("owned")
PART = KEYS.partition(0)
OTHER_KEYS = SubsystemKeys("elsewhere")
OTHER = OTHER_KEYS.partition(0)
OPS = PART.stream(Kind.CLIENT_OPERATIONS)
EVENTS = PART.stream(Kind.EVENTS)


def delivered(client: redis.Redis, consumer: str = "a") -> str:
    """Put one operation and deliver it to ``consumer`` of group g; return its entry id."""
    commit = Commit()
    commit.put(KEYS, Kind.CLIENT_OPERATIONS, encode(Ping(n=1), object_id="1"))
    commit.run_sync(client)
    client.xgroup_create(OPS, "g", id="0")
    reply: Any = client.xreadgroup("g", consumer, {OPS: ">"}, count=1)
    return as_str(reply[0][1][0][0])


def commit_of(entry_id: str, consumer: str) -> Commit:
    """A handler's commit for entry ``entry_id`` of group g: one output event."""
    commit = Commit(Input(PART, Kind.CLIENT_OPERATIONS, "g", consumer, entry_id, "m1", {}))
    commit.append(KEYS, "acct-1", [encode(Opened(owner="ann"), object_id="acct-1")], 0)
    return commit


def test_a_commit_by_the_owner_writes_and_acks(real: Backend) -> None:
    """The consumer that holds the entry commits: output written, entry acked."""
    client = real.sync_client()
    entry_id = delivered(client)
    commit_of(entry_id, "a").run_sync(client)
    assert (1, 0) == (client.xlen(EVENTS), client.xpending(OPS, "g")["pending"])


def test_a_commit_after_a_take_over_writes_nothing(real: Backend) -> None:
    """Consumer b took the entry over (XCLAIM, as XAUTOCLAIM does after the visibility
    timeout): a's late commit raises NotOwner and writes nothing; b's commit goes through."""
    client = real.sync_client()
    entry_id = delivered(client)
    client.xclaim(OPS, "g", "b", 0, [entry_id])
    with pytest.raises(NotOwner):
        commit_of(entry_id, "a").run_sync(client)
    assert 0 == client.xlen(EVENTS)
    assert 1 == client.xpending(OPS, "g")["pending"]
    commit_of(entry_id, "b").run_sync(client)
    assert (1, 0) == (client.xlen(EVENTS), client.xpending(OPS, "g")["pending"])


def test_a_commit_resent_after_it_went_through_writes_nothing(real: Backend) -> None:
    """A commit whose reply was lost and is sent again finds its entry acked: NotOwner, and
    no second copy of its outputs."""
    client = real.sync_client()
    entry_id = delivered(client)
    commit_of(entry_id, "a").run_sync(client)
    with pytest.raises(NotOwner):
        commit_of(entry_id, "a").run_sync(client)
    assert 1 == client.xlen(EVENTS)


def test_a_commit_after_the_group_vanished_writes_nothing(real: Backend) -> None:
    """After the group is destroyed (as by FLUSHALL), OWNS fails cleanly as NotOwner."""
    client = real.sync_client()
    entry_id = delivered(client)
    client.xgroup_destroy(OPS, "g")
    with pytest.raises(NotOwner):
        commit_of(entry_id, "a").run_sync(client)
    assert 0 == client.xlen(EVENTS)


def test_touch_resets_idle_only_for_entries_the_consumer_owns(real: Backend) -> None:
    """TOUCH by the owner resets the entry's idle time; by another consumer it does
    nothing and reports nothing; with a huge idle it makes the entry claimable at once."""
    client = real.sync_client()
    entry_id = delivered(client)
    commit = Commit()
    commit.touch(OPS, "g", "b", [entry_id])
    assert [[]] == commit.run_sync(client)
    commit = Commit()
    commit.touch(OPS, "g", "a", [entry_id], idle_ms=10**9)
    assert [[entry_id.encode()]] == commit.run_sync(client)
    info: Any
    (info,) = client.xpending_range(OPS, "g", "-", "+", 1)
    assert ("a", True) == (as_str(info["consumer"]), info["time_since_delivered"] >= 10**9)
    claimed: Any = client.xautoclaim(OPS, "g", "b", 60_000, count=10, justid=True)
    assert [entry_id.encode()] == claimed  # redis-py returns just the ids with JUSTID


def test_on_a_cluster_outputs_for_other_slots_go_to_the_outbox(real: Backend) -> None:
    """A commit built with home=partition writes same-slot outputs directly and puts each
    output bound for another hash tag into home's outbox, as the one-intent commit a relay
    runs there; nothing is written to the other slot by this commit."""
    client = real.sync_client()
    commit = Commit(home=PART)
    commit.put(KEYS, Kind.EVENTS, encode(Ping(n=1), object_id="here"))
    routed = encode(Ping(n=2), object_id="there")
    commit.put(OTHER_KEYS, Kind.CLIENT_OPERATIONS, routed)
    assert {PART.tag} == {key[: key.index("}") + 1] for key in commit.keys}
    commit.run_sync(client)
    assert (1, 0) == (client.xlen(EVENTS), client.exists(OTHER.stream(Kind.CLIENT_OPERATIONS)))
    ((_, fields),) = entries(client.xrange(PART.outbox))
    assert (routed.message_id.encode(), OTHER.tag.encode()) == (fields[b"id"], fields[b"tag"])
    # What the relay does: run the stored one-op commit in the other slot.
    keys, args = msgpack.unpackb(fields[b"keys"]), msgpack.unpackb(fields[b"args"])
    script("commit").run_sync(client, keys, args)
    assert 1 == client.xlen(OTHER.stream(Kind.CLIENT_OPERATIONS))


def test_commits_in_one_call_fail_one_by_one(backend: Backend, run: Any) -> None:
    """run_commits sends several commits in one script call; a version conflict fails only
    its own commit, the others are written, and a later commit sees an earlier one's writes."""
    client = backend.client()
    commits = []
    for owner in ("ann", "bob", "cy"):
        commit = Commit()
        commit.append(KEYS, f"acct-{owner}", [encode(Opened(owner=owner))], 0)
        commits.append(commit)
    conflicting = Commit()
    conflicting.append(KEYS, "acct-ann", [encode(Opened(owner="again"))], 0)
    results = run(run_commits(client, [*commits[:1], conflicting, *commits[1:]]))
    assert [list, ConcurrencyConflict, list, list] == [type(r) for r in results]
    assert 3 == backend.sync_client().xlen(EVENTS)


def test_a_put_sent_twice_as_a_replay_writes_once(backend: Backend) -> None:
    """redis-py re-sends a command after a lost reply: the same put (same message id) run
    twice writes one entry, and the second run answers with that entry, written."""
    client = backend.sync_client()
    with_object = encode(Ping(n=1), object_id="7")
    without_object = encode(Ping(n=2))
    for envelope in (with_object, without_object):
        commit = Commit()
        commit.put(KEYS, Kind.CLIENT_OPERATIONS, envelope)
        first = commit.run_sync(client)
        second = commit.run_sync(client)
        assert first == second
        assert 1 == first[0][1]
    assert 2 == client.xlen(OPS)


def test_a_raise_put_sent_twice_as_a_replay_does_not_raise(backend: Backend) -> None:
    """A put with OnExisting.RAISE, replayed, finds its own record: no DuplicateRecord."""
    client = backend.sync_client()
    commit = Commit()
    commit.put(KEYS, Kind.CLIENT_OPERATIONS, encode(Ping(n=1), object_id="7"),
               on_existing=OnExisting.RAISE)  # fmt: skip
    assert commit.run_sync(client) == commit.run_sync(client)
    assert 1 == client.xlen(OPS)
    other = Commit()
    other.put(KEYS, Kind.CLIENT_OPERATIONS, encode(Ping(n=2), object_id="7"),
              on_existing=OnExisting.RAISE)  # fmt: skip
    with pytest.raises(DuplicateRecord):
        other.run_sync(client)
