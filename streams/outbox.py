"""A partition's outbox on a cluster, and forwarding it: each entry applied in its slot once.

On a cluster a script may touch one slot only, so a bot's commit (``Commit(home=part)``)
writes what belongs to another partition into ``part.outbox`` instead, in the same atomic
call as the rest: one entry per output, holding the keys and arguments of a one-commit call
for the other slot, the output's message id and, with an input, which record produced it.
``forward`` takes the oldest entries, runs each where its keys live, and then deletes it from
the outbox. Those are two steps in two slots, so the forwarded call carries a mark: its
message id, noted in the target partition in the same call (``Commit.forwarded``). Run a
second time (a relay that died between the two steps, a handler run again whose output had
already gone out) it writes nothing and counts as forwarded.

A forwarded call is checked where it runs, like any commit: an append finds the aggregate at
the version its handler loaded, or the call is refused and writes nothing. A refusal goes
back to the handler: in one commit in the home slot the entry leaves the outbox, the record's
status goes from Completed back to AvailableAfterFailure (its history says why) and its input
is parked in the input's delayed set for that concern alone, so the handler runs again on
fresh state, as a conflict on one server re-runs it at once. Its outputs that had gone out
carry the same message ids on the re-run and are not forwarded twice. After ``max_attempts``
the record is Failed and dead-lettered with the reason instead. An entry that cannot be read,
or a call refused for a reason no re-run fixes (an ACL refusal), is dead-lettered in the home
partition with the reason: never retried forever, never lost silently.

A commit's outputs for one slot are one entry, applied there as one (all checked, then all
written). A commit with outputs for several slots has an entry per slot, in the order of its
outputs; each is forwarded only after the one before it went through, and a refusal drops
the ones after it (its handler runs again and makes them anew). So across slots a commit is
not atomic, but what it sends later never lands when what it sent first was refused.

Order: entries are taken oldest first, those for one slot go in one script call in outbox
order, and a round ends before the next begins, so what one partition sends to another
arrives in the order it was committed (and so does each object's).

Failover: where the target slot's primary has a replica, the forward is followed by WAIT on
the same connection, and entries leave the outbox only after that (or after ``WAIT_MS``
without a confirmation, counted in ``Report.unconfirmed``). So a forward the target's
primary took with it when it failed is forwarded again to the promoted replica, where no
mark of it survived either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamcqrs.domain.errors import ConcurrencyConflict
from streamcqrs.streams._ids import now_ms
from streamcqrs.streams._wire import replicas_of, send_all
from streamcqrs.streams.commit import (
    ATTEMPT_FIELD,
    OUTBOX_FROM,
    Commit,
    OnExisting,
    run_commits,
)
from streamcqrs.streams.deadletter import DeadLetter, dead_letter
from streamcqrs.streams.delayed import Delayed
from streamcqrs.streams.envelope import Entry, as_str, entries, parse
from streamcqrs.streams.errors import (
    AlreadyApplied,
    DecodeError,
    DuplicateRecord,
    Gone,
    InvalidTransition,
    StreamError,
)
from streamcqrs.streams.keys import Kind, PartitionKeys
from streamcqrs.streams.scripts import script
from streamcqrs.streams.statuses import Action, Status

WAIT_MS = 1000
"""How long a forward waits for the target's replica before it counts as forwarded anyway."""
MARK_PERIOD_S = 600
"""Forwarded message ids are noted per period of this many seconds, for two periods: a call
forwarded again within 10 to 20 minutes writes nothing."""
MARKS_KEPT_S = 2 * MARK_PERIOD_S + 60
"""How long one period's marks are kept (they are read for two periods)."""
REFUSALS = (ConcurrencyConflict, DuplicateRecord, InvalidTransition)
"""What a forwarded call's own checks refuse: the handler runs again on fresh state."""
NETWORK = (RedisConnectionError, RedisTimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class Origin:
    """The record whose commit wrote an outbox entry: where it was read, for which concern."""

    stream: str
    concern: str
    record: str
    entry_id: str


@dataclass(frozen=True, slots=True)
class Pending:
    """One outbox entry: a one-commit call for another slot, waiting to be forwarded."""

    entry_id: str
    message_id: str
    tag: str
    """The hash tag of the partition it is for, ``{subsystem.p}``."""
    keys: list[str]
    args: list[Any]
    origin: Origin | None = None

    @classmethod
    def parse(cls, entry_id: str, fields: Mapping[bytes, bytes]) -> Pending:
        """Read an outbox entry's fields; StreamError if they are not one."""
        try:
            keys = [as_str(k) for k in msgpack.unpackb(fields[b"keys"], raw=False)]
            args = list(msgpack.unpackb(fields[b"args"], raw=False))
            origin = None
            if OUTBOX_FROM.encode() in fields:
                origin = Origin(
                    as_str(fields[OUTBOX_FROM.encode()]), as_str(fields[b"for"]),
                    as_str(fields[b"rec"]), as_str(fields[b"eid"]),
                )  # fmt: skip
            return cls(entry_id, as_str(fields[b"id"]), as_str(fields[b"tag"]), keys, args, origin)
        except (KeyError, ValueError, TypeError, msgpack.UnpackException) as exc:
            raise StreamError(f"outbox entry {entry_id} is not a stored commit: {exc!r}") from None


@dataclass(slots=True)
class Report:
    """What one ``forward`` did."""

    forwarded: int = 0
    """Entries applied in their slot now."""
    duplicates: int = 0
    """Entries found applied before (forwarded again after a relay died): nothing written."""
    refused: list[tuple[Pending, Exception]] = field(default_factory=list)
    """Entries their slot's checks refused: sent back to their handler (or failed)."""
    dead: list[tuple[str, str]] = field(default_factory=list)
    """(entry id, reason) of entries dead-lettered: unreadable, or refused for good."""
    waiting: int = 0
    """Entries left for the next round (the target did not answer)."""
    unconfirmed: int = 0
    """Entries forwarded whose slot's replica did not confirm them in time (WAIT)."""

    @property
    def done(self) -> int:
        """Entries that left the outbox."""
        return self.forwarded + self.duplicates + len(self.refused) + len(self.dead)


def target(tag: str) -> PartitionKeys:
    """The partition a hash tag ``{subsystem.p}`` names."""
    subsystem, _, number = tag.strip("{}").rpartition(".")
    return PartitionKeys(subsystem, int(number))


def marks(tag: str, at_ms: int | None = None) -> tuple[str, str]:
    """The forwarded-id hashes of partition ``tag``: this period's and the last one's."""
    period = (now_ms() if at_ms is None else at_ms) // (MARK_PERIOD_S * 1000)
    part = target(tag)
    return part.forwarded(period), part.forwarded(period - 1)


async def waiting(client: redis.asyncio.Redis, part: PartitionKeys, count: int) -> list[Entry]:
    """The oldest ``count`` raw entries of ``part``'s outbox."""
    return entries(await client.xrange(part.outbox, "-", "+", count=count))


async def forward(
    client: redis.asyncio.Redis,
    part: PartitionKeys,
    *,
    count: int = 100,
    max_attempts: int = 5,
    actor: str = "relay",
    send_back: bool = True,
) -> Report:
    """Forward the oldest ``count`` entries of ``part``'s outbox (see the module).

    ``send_back=False`` only takes refused entries out and reports them (a test harness
    that runs handlers itself decides what a refusal means).
    """
    report = Report()
    runnable, junk = _read(await waiting(client, part, count))
    runnable = _in_turn(runnable)
    results, report.unconfirmed = await _apply(client, runnable)
    gone: list[str] = []
    for (entry, _), result in zip(runnable, results, strict=True):
        if isinstance(result, AlreadyApplied):
            report.duplicates += 1
            gone.append(entry.entry_id)
        elif isinstance(result, REFUSALS):
            report.refused.append((entry, result))
        elif isinstance(result, NETWORK):
            report.waiting += 1
        elif isinstance(result, Exception):
            junk.append((entry.entry_id, {}, f"forwarding to {entry.tag} failed: {result}"))
        else:
            report.forwarded += 1
            gone.append(entry.entry_id)
    if gone:
        await _send(client, ("XDEL", part.outbox, *gone))
    for entry, error in report.refused:
        later = await _later_of_same_commit(client, part, entry)
        if send_back:
            await _send_back(client, part, entry, error, later, max_attempts=max_attempts,
                             actor=actor)  # fmt: skip
        else:
            await _send(client, ("XDEL", part.outbox, entry.entry_id, *later))
    for junk_id, fields, reason in junk:
        await _bury(client, part, junk_id, fields, reason)
        report.dead.append((junk_id, reason))
    return report


def _in_turn(runnable: list[tuple[Pending, Commit]]) -> list[tuple[Pending, Commit]]:
    """The longest run from the oldest entry that holds one entry per commit.

    A commit that sends to several slots has one entry per slot, one after another; the
    second goes out only once the first went through (a later round), and not at all if the
    first was refused. So what decides (a saga's own append, made first) is checked before
    what follows from it (the ending it appends elsewhere) is written.
    """
    seen: set[tuple[str, str, str]] = set()
    for at, (entry, _) in enumerate(runnable):
        origin = entry.origin
        if origin is None:
            continue
        name = (origin.stream, origin.entry_id, origin.concern)
        if name in seen:
            return runnable[:at]
        seen.add(name)
    return runnable


async def _later_of_same_commit(
    client: redis.asyncio.Redis, part: PartitionKeys, entry: Pending
) -> list[str]:
    """Ids of the entries right after ``entry`` written by the same commit (for other slots)."""
    if entry.origin is None:
        return []
    found = entries(await client.xrange(part.outbox, f"({entry.entry_id}", "+", count=64))
    later: list[str] = []
    for raw_id, fields in found:
        try:
            origin = Pending.parse(as_str(raw_id), fields).origin
        except StreamError:
            break
        if origin != entry.origin:
            break
        later.append(as_str(raw_id))
    return later


def _read(
    raw: Sequence[Entry],
) -> tuple[list[tuple[Pending, Commit]], list[tuple[str, dict[bytes, bytes], str]]]:
    """Outbox entries with the forwarded commit of each, and those that are none: (entry
    id, fields, why)."""
    runnable: list[tuple[Pending, Commit]] = []
    junk: list[tuple[str, dict[bytes, bytes], str]] = []
    for raw_id, fields in raw:
        eid = as_str(raw_id)
        try:
            entry = Pending.parse(eid, fields)
            commit = Commit.forwarded(entry.keys, entry.args, marks=marks(entry.tag),
                                      keep_s=MARKS_KEPT_S, message_id=entry.message_id)  # fmt: skip
        except StreamError as exc:
            junk.append((eid, fields, str(exc)))
            continue
        runnable.append((entry, commit))
    return runnable, junk


async def _apply(
    client: redis.asyncio.Redis, runnable: Sequence[tuple[Pending, Commit]]
) -> tuple[list[list[Any] | Exception], int]:
    """Run the forwarded commits: one script call per target slot, in outbox order, each
    followed by WAIT for a replica where that slot has one. Their results, and how many no
    replica confirmed within ``WAIT_MS`` (forwarded all the same: see the module)."""
    commit_script = script("commit")
    groups: dict[str, list[int]] = {}
    for at, (entry, _) in enumerate(runnable):
        groups.setdefault(entry.tag, []).append(at)
    calls: list[tuple[Any, ...]] = []
    layout: list[tuple[list[int], int]] = []
    for ats in groups.values():
        keys = list(dict.fromkeys(k for at in ats for k in runnable[at][1].keys))
        args = [a for at in ats for a in runnable[at][1].args()]
        calls.append(("EVALSHA", commit_script.sha, len(keys), *keys, *args))
        replicas = min(1, replicas_of(client, keys[0]))
        if replicas:
            calls.append(("WAIT", replicas, WAIT_MS))
        layout.append((ats, replicas))
    replies = await send_all(client, calls)
    if any(isinstance(r, NoScriptError) for r in replies):
        # A restarted or promoted node without the script: load it, send again (what ran
        # the first time is a duplicate the second: ONCE).
        await commit_script.load(client)
        replies = await send_all(client, calls)
    results: list[list[Any] | Exception] = [StreamError("not run")] * len(runnable)
    unconfirmed = 0
    at_reply = 0
    for ats, replicas in layout:
        reply = replies[at_reply]
        acked = replies[at_reply + 1] if replicas else 0
        at_reply += 2 if replicas else 1
        for n, at in enumerate(ats):
            commit = runnable[at][1]
            if isinstance(reply, ResponseError):
                results[at] = commit.error(str(reply))
            elif isinstance(reply, Exception):
                results[at] = reply
            else:
                results[at] = commit.result(reply[n])
        if replicas and (isinstance(acked, Exception) or int(acked) < replicas):
            unconfirmed += len(ats)
    return results, unconfirmed


async def _send(client: redis.asyncio.Redis, call: tuple[Any, ...]) -> Any:
    (reply,) = await send_all(client, [call])
    if isinstance(reply, Exception):
        raise reply
    return reply


async def _bury(
    client: redis.asyncio.Redis,
    part: PartitionKeys,
    entry_id: str,
    fields: Mapping[bytes, bytes],
    reason: str,
) -> None:
    """Dead-letter an outbox entry in its own partition and take it out, in one commit."""
    if not fields:
        found = entries(await client.xrange(part.outbox, entry_id, entry_id))
        fields = found[0][1] if found else {}
    letter = dead_letter(reason=reason, stream=part.outbox, entry_id=entry_id, raw=fields)
    commit = Commit(replay_safe=False)
    commit.unqueue(part.outbox, [entry_id])
    commit.dead_letter(letter, part=part)
    (result,) = await run_commits(client, [commit])
    if isinstance(result, Exception) and not isinstance(result, Gone):
        raise result


async def _send_back(
    client: redis.asyncio.Redis,
    part: PartitionKeys,
    entry: Pending,
    error: Exception,
    later: Sequence[str],
    *,
    max_attempts: int,
    actor: str,
) -> None:
    """A refused forward: its record runs again (or fails), in one commit in the home slot;
    the entries its commit wrote for other slots after it (``later``) go, unforwarded."""
    why = f"output for {entry.tag} refused there: {error}"
    origin = entry.origin
    commit = Commit(replay_safe=False)
    commit.unqueue(part.outbox, [entry.entry_id, *later])
    if origin is None:  # not a bot's commit: nobody to send it back to
        commit.dead_letter(_letter(part, entry, why, raw={}, error=error, concern=""), part=part)
    else:
        kind = Kind(origin.stream.partition(":")[2])
        found = entries(await client.xrange(origin.stream, origin.entry_id, origin.entry_id))
        raw: dict[bytes, bytes] = found[0][1] if found else {}
        record = (part, kind, origin.concern, origin.record)
        attempt = int(raw.get(ATTEMPT_FIELD) or 1)
        try:
            envelope = parse(origin.stream, origin.entry_id, raw) if raw else None
        except DecodeError:
            envelope = None
        if envelope is None or attempt >= max_attempts:
            gave_up = why if envelope else f"{why}; its input {origin.entry_id} is gone"
            letter = _letter(part, entry, gave_up, raw=raw, error=error, concern=origin.concern,
                             attempts=attempt)  # fmt: skip
            commit.dead_letter(letter, part=part)
            commit.settle(Action.FAIL, record=record, allowed_from=[Status.COMPLETED.value],
                          details=gave_up, actor=actor, attempt=attempt)  # fmt: skip
        else:
            member = Delayed(kind.value, envelope, OnExisting.WRITE.value, 1,
                             attempt + 1, origin.concern)  # fmt: skip
            commit.delay(part.delayed(kind), now_ms(), member.pack())
            commit.settle(Action.RETRY, record=record, allowed_from=[Status.COMPLETED.value],
                          details=f"attempt {attempt}: {why}; handled again", actor=actor,
                          attempt=attempt)  # fmt: skip
    (result,) = await run_commits(client, [commit])
    if isinstance(result, InvalidTransition | Gone):
        # Settled otherwise meanwhile (an operator) or sent back by another relay: only
        # take the entries out.
        await _send(client, ("XDEL", part.outbox, entry.entry_id, *later))
    elif isinstance(result, Exception):
        raise result


def _letter(
    part: PartitionKeys,
    entry: Pending,
    reason: str,
    *,
    raw: Mapping[bytes, bytes],
    error: Exception,
    concern: str,
    attempts: int = 0,
) -> DeadLetter:
    """A dead letter for a refused forward: the input if it is there, else the entry."""
    if raw and entry.origin is not None:
        origin = entry.origin
        return dead_letter(reason=reason, stream=origin.stream, entry_id=origin.entry_id,
                           raw=raw, concern=concern, error=error, attempts=attempts)  # fmt: skip
    fields = {b"id": entry.message_id.encode(), b"tag": entry.tag.encode()}
    return dead_letter(reason=reason, stream=part.outbox, entry_id=entry.entry_id, raw=fields,
                       concern=concern, error=error, attempts=attempts)  # fmt: skip


async def drain(
    client: redis.asyncio.Redis,
    parts: Sequence[PartitionKeys],
    *,
    rounds: int = 100,
    max_attempts: int = 5,
    send_back: bool = True,
) -> Report:
    """Forward every outbox of ``parts`` until empty (tests, tools).

    Bounded by ``rounds``; what is still waiting (a target that does not answer) stays.
    """
    total = Report()
    for _ in range(rounds):
        moved = 0
        for part in parts:
            report = await forward(client, part, max_attempts=max_attempts, send_back=send_back)
            total.forwarded += report.forwarded
            total.duplicates += report.duplicates
            total.refused += report.refused
            total.dead += report.dead
            total.waiting = report.waiting
            moved += report.done
        if not moved:
            break
    return total


async def lag(client: redis.asyncio.Redis, part: PartitionKeys) -> tuple[int, float | None]:
    """Entries waiting in ``part``'s outbox, and the age in seconds of the oldest (or None)."""
    length, oldest = await send_all(
        client, [("XLEN", part.outbox), ("XRANGE", part.outbox, "-", "+", "COUNT", 1)]
    )
    for reply in (length, oldest):
        if isinstance(reply, ResponseError):
            raise reply
    if not oldest:
        return int(length), None
    first_ms = int(as_str(oldest[0][0]).partition("-")[0])
    return int(length), max(0.0, (now_ms() - first_ms) / 1000)


__all__ = [
    "MARK_PERIOD_S",
    "REFUSALS",
    "Origin",
    "Pending",
    "Report",
    "drain",
    "forward",
    "lag",
    "marks",
    "target",
]
