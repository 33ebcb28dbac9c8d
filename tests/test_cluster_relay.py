"""The outbox relay on a real 3-shard cluster: forwarded once, in order, refusals sent back.

A bot's commit on a cluster writes what belongs to another slot into its input partition's
outbox; ``streams.outbox.forward`` runs each entry in its slot and then takes it out. These
tests drive that directly (no bot processes): the partitions ``home.0`` and ``away.0`` sit on
different primaries of the session cluster.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import pytest

from streamcqrs.bots.outbox_relay import OutboxRelay, check_slots
from streamcqrs.bots.status import outbox_lag
from streamcqrs.domain.errors import ConcurrencyConflict, ConfigurationError
from streamcqrs.handlers import App
from streamcqrs.handlers.delivery import sources
from streamcqrs.streams import outbox
from streamcqrs.streams.cluster import LocalCluster
from streamcqrs.streams.commit import ATTEMPT_FIELD, Commit, Input, run_commits
from streamcqrs.streams.delayed import Delayed
from streamcqrs.streams.envelope import Envelope, as_str, encode, entries
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.statuses import Action, Status, decode_stored
from tests.messages import Opened, Ping
from tests.support import Run, async_client, sync_client

pytestmark = pytest.mark.cluster

HOME_KEYS, AWAY_KEYS = SubsystemKeys("home"), SubsystemKeys("away")
HOME, AWAY = HOME_KEYS.partition(0), AWAY_KEYS.partition(0)
OPS = HOME.stream(Kind.CLIENT_OPERATIONS)


class Killed(BaseException):
    """Stands for SIGKILL at one exact point of a relay's round."""


def test_the_partitions_used_here_sit_on_different_primaries(
    session_cluster: LocalCluster,
) -> None:
    """home.0 and away.0 are served by different primaries (else nothing here crosses)."""
    assert session_cluster.node_for(HOME.outbox) != session_cluster.node_for(AWAY.outbox)


def delivered(client: Any, envelope: Envelope, *, attempt: int = 0) -> str:
    """Put ``envelope`` into home's client operations and deliver it to consumer c of group g."""
    extra: list[Any] = [ATTEMPT_FIELD, attempt] if attempt else []
    commit = Commit()
    commit.put_at(HOME, Kind.CLIENT_OPERATIONS, envelope, extra=extra)
    commit.run_sync(client)
    client.xgroup_create(OPS, "g", id="0")
    reply: Any = client.xreadgroup("g", "c", {OPS: ">"}, count=1)
    return as_str(reply[0][1][0][0])


def handled(entry_id: str, envelope: Envelope) -> Commit:
    """The commit a bot on the cluster makes for that entry: home-routed, settled Completed."""
    inp = Input(HOME, Kind.CLIENT_OPERATIONS, "g", "c", entry_id, envelope.message_id,
                envelope.entry(), envelope)  # fmt: skip
    return Commit(inp, home=HOME)


def racing(sync: Any, *, attempt: int = 0) -> tuple[Envelope, Commit]:
    """Aggregate acct of away.0 at version 1, and the commit (home-routed, for a delivered
    input) of a handler that loaded it before that: an append to it at 0 is refused there."""
    setup = Commit()
    setup.append(AWAY_KEYS, "acct", [encode(Opened(owner="first"), object_id="acct")], 0)
    setup.run_sync(sync)
    envelope = encode(Ping(n=1), object_id="p1")
    return envelope, handled(delivered(sync, envelope, attempt=attempt), envelope)


LATE = [encode(Opened(owner="late"), object_id="acct")]
"""The append at version 0 that ``racing``'s aggregate refuses."""


def test_outputs_for_another_slot_arrive_once_and_in_order(
    cluster_url: str, run: Run[Any]
) -> None:
    """60 puts for one object of away.0, committed in home.0: forwarded in commit order,
    each once, and the outbox is empty after; a second pass forwards nothing."""
    client = async_client(cluster_url)
    for n in range(60):
        commit = Commit(home=HOME)
        commit.put(AWAY_KEYS, Kind.CLIENT_OPERATIONS, encode(Ping(n=n), object_id="x"))
        run(commit.run(client))
    assert 60 == run(client.xlen(HOME.outbox))

    first = run(outbox.forward(client, HOME, count=25))
    rest = run(outbox.drain(client, [HOME]))
    again = run(outbox.drain(client, [HOME]))

    found = entries(run(client.xrange(AWAY.stream(Kind.CLIENT_OPERATIONS))))
    numbers = [msgpack.unpackb(raw[b"data"])["n"] for _, raw in found]
    assert (25, 35, 0) == (first.forwarded, rest.forwarded, again.forwarded)
    assert list(range(60)) == numbers
    assert 0 == run(client.xlen(HOME.outbox))
    run(client.aclose())


def test_a_relay_killed_between_forwarding_and_marking_forwards_nothing_twice(
    cluster_url: str, run: Run[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay dies after its forwards ran in away.0 and before it took them out of the
    outbox: the next relay runs them again, each writes nothing (same message id), and every
    output exists exactly once."""
    client = async_client(cluster_url)
    for n in range(20):
        commit = Commit(home=HOME)
        commit.put(AWAY_KEYS, Kind.CLIENT_OPERATIONS, encode(Ping(n=n), object_id=f"o{n}"))
        commit.append(AWAY_KEYS, f"acct-{n}", [encode(Opened(owner="ann"), object_id=f"acct-{n}")],
                      0)  # fmt: skip
        run(commit.run(client))

    def die(*_: Any) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(outbox, "_send", die)  # the XDEL that marks them forwarded
        with pytest.raises(Killed):
            run(outbox.forward(client, HOME))
    assert 20 == run(client.xlen(HOME.outbox))  # forwarded, not marked (one entry a commit)

    after = run(outbox.drain(client, [HOME]))

    assert (0, 20, 0) == (after.forwarded, after.duplicates, run(client.xlen(HOME.outbox)))
    assert 20 == run(client.xlen(AWAY.stream(Kind.CLIENT_OPERATIONS)))
    assert 20 == run(client.xlen(AWAY.stream(Kind.EVENTS)))
    assert [1] * 20 == [run(client.llen(AWAY.aggregate(f"acct-{n}"))) for n in range(20)]
    run(client.aclose())


def test_a_version_conflict_there_sends_the_record_back_to_its_handler(
    cluster_url: str, run: Run[Any]
) -> None:
    """A cross-slot append at version 0 meets an aggregate at version 1: nothing is written
    there, the outbox entry is gone, and the record is AvailableAfterFailure again (history
    says why) with its input parked for its concern alone, as attempt 2."""
    sync = sync_client(cluster_url)
    envelope, commit = racing(sync)
    commit.append(AWAY_KEYS, "acct", LATE, 0)
    commit.settle(Action.COMPLETE, actor="c")
    commit.run_sync(sync)
    client = async_client(cluster_url)

    report = run(outbox.forward(client, HOME))

    ((_entry, error),) = report.refused
    assert isinstance(error, ConcurrencyConflict)
    assert 1 == sync.llen(AWAY.aggregate("acct"))
    assert 0 == sync.xlen(HOME.outbox)
    stored = sync.hget(HOME.handling_status(Kind.CLIENT_OPERATIONS, "g"), envelope.message_id)
    status, history = decode_stored(stored)
    assert Status.AVAILABLE_AFTER_FAILURE == status
    assert "refused" in history[-1].details and "away.0" in history[-1].details
    (member,) = sync.zrange(HOME.delayed(Kind.CLIENT_OPERATIONS), 0, -1)
    parked = Delayed.unpack(member)
    assert (2, "g", envelope.message_id) == (parked.attempt, parked.concern,
                                             parked.envelope.message_id)  # fmt: skip
    run(client.aclose())
    sync.close()


def test_after_the_last_attempt_a_refused_record_is_failed_and_dead_lettered(
    cluster_url: str, run: Run[Any]
) -> None:
    """The same refusal on attempt 5 of 5: the record is Failed and its input dead-lettered
    with the reason; nothing is parked."""
    sync = sync_client(cluster_url)
    envelope, commit = racing(sync, attempt=5)
    commit.append(AWAY_KEYS, "acct", LATE, 0)
    commit.settle(Action.COMPLETE, actor="c")
    commit.run_sync(sync)
    client = async_client(cluster_url)

    run(outbox.forward(client, HOME, max_attempts=5))

    stored = sync.hget(HOME.handling_status(Kind.CLIENT_OPERATIONS, "g"), envelope.message_id)
    assert Status.FAILED == decode_stored(stored)[0]
    assert 0 == sync.zcard(HOME.delayed(Kind.CLIENT_OPERATIONS))
    (letter,) = entries(sync.xrange(HOME.stream(Kind.DEAD_LETTERS)))
    assert envelope.message_id.encode() in letter[1][b"data"]
    run(client.aclose())
    sync.close()


def test_an_unreadable_outbox_entry_is_dead_lettered_not_retried(
    cluster_url: str, run: Run[Any]
) -> None:
    """Junk in an outbox goes to the partition's dead letters with the reason; the entries
    behind it are forwarded."""
    sync = sync_client(cluster_url)
    sync.xadd(HOME.outbox, {"what": "junk"})
    commit = Commit(home=HOME)
    commit.put(AWAY_KEYS, Kind.CLIENT_OPERATIONS, encode(Ping(n=1), object_id="x"))
    commit.run_sync(sync)
    client = async_client(cluster_url)

    report = run(outbox.forward(client, HOME))

    assert (1, 1) == (report.forwarded, len(report.dead))
    assert "not a stored commit" in report.dead[0][1]
    assert (0, 1) == (sync.xlen(HOME.outbox), sync.xlen(HOME.stream(Kind.DEAD_LETTERS)))
    run(client.aclose())
    sync.close()


def test_relays_share_the_partitions_and_take_over_a_silent_one(
    cluster_url: str, run: Run[Any]
) -> None:
    """One relay alone holds all 4 outboxes; a second one alive makes each hold 2; when the
    first stops renewing, the second holds all 4 once the leases lapse."""
    parts = SubsystemKeys("home", 4).all()
    client = async_client(cluster_url)

    def relay(name: str) -> OutboxRelay:
        return OutboxRelay(client, parts, holder=name, lease_s=0.3, interval=0.05, max_attempts=5,
                     log=_Quiet())  # fmt: skip

    first, second = relay("first"), relay("second")

    async def scenario() -> tuple[int, int, int, int, int]:
        alone = len(await first.renew())
        before = len(await second.renew())  # alive now, but every lease is taken
        await first.renew()  # sees two relays: gives up its share beyond 2
        shared = (len(await second.renew()), len(first.held))
        deadline = time.monotonic() + 10
        taken = 0
        while time.monotonic() < deadline:  # first is silent from here on
            taken = len(await second.renew())
            if taken == 4:
                break
            await _sleep(0.1)
        return alone, before, *shared, taken

    assert (4, 0, 2, 2, 4) == run(scenario())
    run(client.aclose())


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class _Quiet:
    """A logger that drops what it is told."""

    def info(self, *_: Any, **__: Any) -> None: ...

    def error(self, *_: Any, **__: Any) -> None: ...

    def warning(self, *_: Any, **__: Any) -> None: ...


def test_a_script_call_across_slots_is_refused_naming_the_key(
    cluster_url: str, run: Run[Any]
) -> None:
    """A commit built without home= that touches two partitions is refused before it is
    sent, naming the key of the other slot; the keys a bot's commits use pass the start
    check."""
    client = async_client(cluster_url)
    commit = Commit()
    commit.put(HOME_KEYS, Kind.CLIENT_OPERATIONS, encode(Ping(n=1), object_id="x"))
    commit.put(AWAY_KEYS, Kind.CLIENT_OPERATIONS, encode(Ping(n=2), object_id="y"))

    (result,) = run(run_commits(client, [commit]))

    assert isinstance(result, ConfigurationError)
    assert "'{away.0}:client-ops'" in str(result)
    app = App("slots")
    app.subsystem("home", partitions=4)

    @app.handler(Ping, stream="home/client-ops")
    async def noop(_: Ping, __: Any) -> None: ...

    check_slots(sources(app))
    run(client.aclose())


def test_status_shows_the_outbox_lag_until_the_relay_forwards(
    cluster_url: str, run: Run[Any]
) -> None:
    """``outbox_lag`` (what ``streamcqrs status`` prints) counts what waits and its age."""
    sync = sync_client(cluster_url)
    commit = Commit(home=HOME)
    commit.put(AWAY_KEYS, Kind.CLIENT_OPERATIONS, encode(Ping(n=1), object_id="x"))
    commit.run_sync(sync)
    waiting, age = outbox_lag(sync, HOME)
    client = async_client(cluster_url)
    run(outbox.drain(client, [HOME]))

    assert 1 == waiting and age is not None and age >= 0
    assert (0, None) == outbox_lag(sync, HOME)
    run(client.aclose())
    sync.close()



def test_order_per_object_holds_while_relays_come_and_go(
    cluster_url: str, run: Run[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three objects' outputs, committed in order in home.0: the first relay forwards a
    round and dies before marking it, the second takes the lease over once it lapses and
    forwards the rest. In away.0 each object's outputs are in commit order, each once."""
    client = async_client(cluster_url)
    for n in range(90):
        commit = Commit(home=HOME)
        commit.put(AWAY_KEYS, Kind.CLIENT_OPERATIONS, encode(Ping(n=n), object_id=f"o{n % 3}"))
        run(commit.run(client))

    def relay(name: str) -> OutboxRelay:
        return OutboxRelay(client, [HOME], holder=name, lease_s=0.3, interval=0.05, max_attempts=5,
                     log=_Quiet())  # fmt: skip

    first, second = relay("first"), relay("second")

    async def scenario() -> tuple[int, int]:
        held = len(await first.renew())
        with monkeypatch.context() as patch:

            def die(*_: Any) -> None:
                raise Killed

            patch.setattr(outbox, "_send", die)
            with pytest.raises(Killed):
                await first.round()  # forwarded them all, and died before marking them
        taken = 0
        deadline = time.monotonic() + 10
        while not taken and time.monotonic() < deadline:
            taken = len(await second.renew())  # the lease lapses: first no longer renews
            await _sleep(0.05)
        while await second.round():
            pass
        return held, taken

    assert (1, 1) == run(scenario())
    found = entries(run(client.xrange(AWAY.stream(Kind.CLIENT_OPERATIONS))))
    per_object: dict[str, list[int]] = {}
    for _, raw in found:
        per_object.setdefault(raw[b"obj"].decode(), []).append(msgpack.unpackb(raw[b"data"])["n"])
    assert {f"o{k}": list(range(k, 90, 3)) for k in range(3)} == per_object
    assert 0 == run(client.xlen(HOME.outbox))
    run(client.aclose())


def test_a_commits_outputs_for_one_slot_are_applied_together(
    cluster_url: str, run: Run[Any]
) -> None:
    """A put and a conflicting append bound for away.0 in one commit: the append's refusal
    refuses the put too (they are one commit there), and the record is sent back."""
    sync = sync_client(cluster_url)
    _, commit = racing(sync)
    commit.put(AWAY_KEYS, Kind.CLIENT_OPERATIONS, encode(Ping(n=2), object_id="acct"))
    commit.append(AWAY_KEYS, "acct", LATE, 0)
    commit.settle(Action.COMPLETE, actor="c")
    commit.run_sync(sync)
    client = async_client(cluster_url)

    report = run(outbox.forward(client, HOME))

    assert (1, 0) == (len(report.refused), report.forwarded)
    written = (sync.xlen(AWAY.stream(Kind.CLIENT_OPERATIONS)), sync.llen(AWAY.aggregate("acct")))
    assert (0, 1) == written
    run(client.aclose())
    sync.close()


def test_what_a_commit_sends_second_waits_for_its_first_and_goes_if_it_is_refused(
    cluster_url: str, session_cluster: LocalCluster, run: Run[Any]
) -> None:
    """A commit appending first to away.0 (which conflicts) and then putting into away.1: the
    put is held back while the append is tried, and dropped when it is refused; a commit whose
    first output goes through gets its second forwarded in the next round."""
    other = SubsystemKeys("away", 2)
    second = other.partition(1)
    assert session_cluster.node_for(second.outbox) not in (
        session_cluster.node_for(HOME.outbox), session_cluster.node_for(AWAY.outbox))
    sync = sync_client(cluster_url)
    _, refused = racing(sync)
    refused.append(AWAY_KEYS, "acct", LATE, 0)
    ok_put = encode(Ping(n=3), object_id="y")
    assert 1 == other.for_object("y").partition
    refused.put(other, Kind.CLIENT_OPERATIONS, encode(Ping(n=2), object_id="y"))
    refused.settle(Action.COMPLETE, actor="c")
    refused.run_sync(sync)
    fine = Commit(home=HOME)
    fine.append(AWAY_KEYS, "acct2", [encode(Opened(owner="x"), object_id="acct2")], 0)
    fine.put(other, Kind.CLIENT_OPERATIONS, ok_put)
    fine.run_sync(sync)
    client = async_client(cluster_url)

    first = run(outbox.forward(client, HOME))
    rest = run(outbox.drain(client, [HOME]))

    assert (1, 0) == (len(first.refused), first.forwarded)  # the round stops at its 2nd entry
    assert (2, 0) == (rest.forwarded, len(rest.refused))  # fine's two, one round each
    (put,) = entries(sync.xrange(second.stream(Kind.CLIENT_OPERATIONS)))
    assert ok_put.message_id.encode() == put[1][b"id"]
    assert 0 == sync.xlen(HOME.outbox)
    run(client.aclose())
    sync.close()
