"""What the cleaner does to one partition of one stream, step by step (``clean.lua``).

* ``forget_done``: remove the handling status and history of records done (Completed or
  ArchivedAfterFailure) before a cutoff. Failed and disabled records are never touched.
* ``trim``: drop a stream's oldest entries by age or count, never past what a consumer group
  has not read or still has pending; with each entry go its index entries (latest by id, by
  tag, by object) and the done statuses of its record.
* ``compact``: drop aggregates' events behind their latest snapshot (``Commit.compact``).

Each step is one script call over one partition (one slot) whose every write is conditional
(a status is forgotten only if it still holds the value read) or idempotent (removing an
index entry, trimming to an id): a cleaner killed between steps leaves consistent state, and
whoever runs the cycle again finds the same work. Each step also notes in the partition's
``cleaned`` hash what was removed up to where, so ``streamcqrs show`` can say a record was
cleaned rather than that it never existed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgpack
import orjson
import redis.asyncio
from redis.exceptions import ResponseError

from streamcqrs.streams._ids import entry_key
from streamcqrs.streams.commit import Commit, run_commits
from streamcqrs.streams.envelope import Entry, as_str, entries
from streamcqrs.streams.keys import Kind, PartitionKeys, check_concern
from streamcqrs.streams.scripts import script
from streamcqrs.streams.statuses import Status, decode_stored

CLEANABLE = frozenset({Status.COMPLETED.value, Status.ARCHIVED_AFTER_FAILURE.value})
"""Statuses whose record the cleaner may forget: done, and not waiting for an operator."""
Between = Callable[[], Awaitable[None]]
"""Called between two steps: renew the leader's lease (raising if lost), pause."""


async def _nothing() -> None:
    return None


@dataclass
class Step:
    """The ops of one ``clean.lua`` call, over the keys they name."""

    keys: dict[str, int]
    args: list[Any]

    @classmethod
    def new(cls) -> Step:
        return cls({}, [])

    def _key(self, key: str) -> int:
        return self.keys.setdefault(key, len(self.keys) + 1)

    def pairs(self, code: str, key: str, pairs: Sequence[tuple[bytes | str, bytes | str]]) -> None:
        """FORGET, UNINDEX or NOTE: one key, field/value pairs."""
        if pairs:
            self.args += [code, self._key(key), len(pairs), *(x for p in pairs for x in p)]

    def zrem(self, key: str, members: Sequence[bytes | str]) -> None:
        if members:
            self.args += ["ZREM", self._key(key), len(members), *members]

    def trim(self, stream: str, minid: str) -> None:
        self.args += ["TRIM", self._key(stream), minid]

    async def run(self, client: redis.asyncio.Redis) -> tuple[int, int, int]:
        """Apply; (statuses forgotten, index entries removed, entries trimmed)."""
        if not self.args:
            return 0, 0, 0
        reply = await script("clean").run(client, list(self.keys), self.args)
        forgotten, unindexed, trimmed = (int(x) for x in reply)
        return forgotten, unindexed, trimmed


def done_before(value: bytes, cutoff_ms: int) -> bool:
    """True if a stored handling value is done (see CLEANABLE) since before ``cutoff_ms``."""
    status = value.partition(b"|")[0]
    if status.decode(errors="replace") not in CLEANABLE:
        return False
    try:
        _, history = decode_stored(value)
    except Exception:  # HandlingError: a value we cannot read is never ours to drop
        return False
    return bool(history) and history[-1].at_ms < cutoff_ms


async def concerns(
    client: redis.asyncio.Redis, stream: str, known: Iterable[str] = ()
) -> list[str]:
    """The concerns with handling statuses on ``stream``: its consumer groups and ``known``."""
    names = set(known)
    with contextlib.suppress(ResponseError):  # no such stream yet
        for group in await client.xinfo_groups(stream):
            names.add(as_str(group["name"]))
    out = []
    for name in sorted(names):
        with contextlib.suppress(ValueError):
            out.append(check_concern(name))
    return out


async def forget_done(
    client: redis.asyncio.Redis,
    part: PartitionKeys,
    kind: Kind,
    concern: str,
    cutoff_ms: int,
    *,
    batch: int = 500,
    between: Between = _nothing,
) -> int:
    """Forget the statuses and histories of ``concern``'s records done before ``cutoff_ms``."""
    status_key = part.handling_status(kind, concern)
    forgotten = 0
    cursor = 0
    while True:
        cursor, found = await client.hscan(status_key, cursor, count=batch)
        stored = cast(dict[bytes, bytes], found)
        done = [(f, v) for f, v in stored.items() if done_before(v, cutoff_ms)]
        step = Step.new()
        step.pairs("FORGET", status_key, done)
        step.pairs("NOTE", part.cleaned(kind), [(f"done:{concern}", str(cutoff_ms))])
        forgotten += (await step.run(client))[0]
        if int(cursor) == 0:
            return forgotten
        await between()


async def safe_point(client: redis.asyncio.Redis, stream: str) -> str | None:
    """The oldest entry id some consumer group of ``stream`` still needs (None: no groups).

    A group needs its pending entries and everything after what it was last delivered.
    """
    try:
        groups = await client.xinfo_groups(stream)
    except ResponseError:
        return None
    needed: list[str] = []
    for group in groups:
        last = as_str(group["last-delivered-id"])
        ms, _, seq = last.partition("-")
        needed.append(f"{ms}-{int(seq or 0) + 1}")
        if int(group["pending"]):
            summary = await client.xpending(stream, as_str(group["name"]))
            if summary.get("min"):
                needed.append(as_str(summary["min"]))
    return min(needed, key=entry_key) if needed else None


def _tags(raw: dict[bytes, bytes]) -> list[tuple[str, str]]:
    packed = raw.get(b"tags", b"")
    if not packed:
        return []
    try:
        return [(str(n), str(v)) for n, v in msgpack.unpackb(packed)]
    except (ValueError, TypeError, msgpack.UnpackException):
        return []


async def trim(
    client: redis.asyncio.Redis,
    part: PartitionKeys,
    kind: Kind,
    *,
    now_ms: int,
    max_age_ms: int | None = None,
    maxlen: int | None = None,
    known_concerns: Iterable[str] = (),
    batch: int = 500,
    between: Between = _nothing,
) -> tuple[int, int, int]:
    """Trim ``part``'s ``kind`` stream by age and/or length, with its index entries and the
    done statuses of its records; (entries trimmed, index entries removed, statuses forgotten).
    """
    stream = part.stream(kind)
    safe = await safe_point(client, stream)
    groups = await concerns(client, stream, known_concerns)
    age_cut = f"{now_ms - max_age_ms}-0" if max_age_ms is not None else None
    total = [0, 0, 0]
    while True:
        over = int(await client.xlen(stream)) - maxlen if maxlen is not None else 0
        found = entries(await client.xrange(stream, "-", "+", count=batch))
        doomed: list[Entry] = []
        for at, (entry_id, raw) in enumerate(found):
            eid = as_str(entry_id)
            if safe is not None and entry_key(eid) >= entry_key(safe):
                break
            by_age = age_cut is not None and entry_key(eid) < entry_key(age_cut)
            if not (by_age or at < over):
                break
            doomed.append((entry_id, raw))
        if not doomed:
            return total[0], total[1], total[2]
        step = Step.new()
        await _unindex(client, step, part, kind, doomed, groups)
        last = as_str(doomed[-1][0])
        ms, _, seq = last.partition("-")
        minid = f"{ms}-{int(seq) + 1}"
        step.trim(stream, minid)
        step.pairs("NOTE", part.cleaned(kind), [("trimmed_before", minid),
                                                ("trimmed_at", str(now_ms))])  # fmt: skip
        forgotten, unindexed, trimmed = await step.run(client)
        total[0] += trimmed
        total[1] += unindexed
        total[2] += forgotten
        if len(doomed) < len(found) or not found:
            return total[0], total[1], total[2]
        await between()


async def _unindex(  # noqa: PLR0917 - internal, one step of trim
    client: redis.asyncio.Redis,
    step: Step,
    part: PartitionKeys,
    kind: Kind,
    doomed: Sequence[Entry],
    concerns_: Sequence[str],
) -> None:
    """Add to ``step`` the index entries and done statuses of the ``doomed`` entries."""
    latest: list[tuple[bytes | str, bytes | str]] = []
    by_key: dict[str, list[bytes | str]] = {}
    records: list[bytes] = []
    for entry_id, raw in doomed:
        obj = raw.get(b"obj", b"")
        if obj:
            latest.append((obj, entry_id))
            by_key.setdefault(part.by_object(kind, as_str(obj)), []).append(entry_id)
        for name, value in _tags(raw):
            if name and "=" not in name:
                by_key.setdefault(part.tag_index(kind, name, value), []).append(entry_id)
        if raw.get(b"id"):
            records.append(raw[b"id"])
    step.pairs("UNINDEX", part.index(kind), latest)
    for key, members in by_key.items():
        step.zrem(key, members)
    if not records:
        return
    for concern in concerns_:
        status_key = part.handling_status(kind, concern)
        values = cast(list[bytes | None], await client.hmget(status_key, records))
        done: list[tuple[bytes | str, bytes | str]] = [
            (record, value)
            for record, value in zip(records, values, strict=True)
            if value is not None and value.partition(b"|")[0].decode(errors="replace") in CLEANABLE
        ]
        step.pairs("FORGET", status_key, done)


async def compact(
    client: redis.asyncio.Redis,
    part: PartitionKeys,
    *,
    batch: int = 500,
    between: Between = _nothing,
) -> int:
    """Compact the aggregates of ``part`` behind snapshots put since the last run; how many
    events were dropped."""
    snapshots = part.stream(Kind.SNAPSHOTS)
    notes = part.cleaned(Kind.SNAPSHOTS)
    dropped = 0
    while True:
        cursor = await client.hget(notes, "compacted_through")
        low = f"({as_str(cursor)}" if cursor else "-"
        found = entries(await client.xrange(snapshots, low, "+", count=batch))
        if not found:
            return dropped
        commits = []
        for _entry_id, raw in found:
            obj = as_str(raw.get(b"obj", b""))
            try:
                version = int(orjson.loads(raw.get(b"data", b"{}"))["version"])
            except (ValueError, KeyError, TypeError):
                continue  # not a snapshot the loader could use either: compact nothing
            if obj and version > 0:
                commit = Commit()
                commit.compact(part.aggregate(obj), version)
                commits.append(commit)
        for result in await run_commits(client, commits):
            if isinstance(result, Exception):
                raise result
            dropped += int(result[0])
        await client.hset(notes, "compacted_through", as_str(found[-1][0]))
        if len(found) < batch:
            return dropped
        await between()


async def notes(client: redis.asyncio.Redis, part: PartitionKeys, kind: Kind) -> dict[str, str]:
    """What the cleaner noted about ``part``'s ``kind`` stream (see the module docstring)."""
    raw = await client.hgetall(part.cleaned(kind))
    return {as_str(k): as_str(v) for k, v in raw.items()}


__all__ = [
    "CLEANABLE",
    "Between",
    "Step",
    "compact",
    "concerns",
    "done_before",
    "forget_done",
    "notes",
    "safe_point",
    "trim",
]
