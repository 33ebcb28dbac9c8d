"""``streamcqrs status``: how far each consumer group of an app is, and what is stuck.

Per stream partition and consumer group: the stream's length, the lag (entries not yet
delivered to the group), the pending entries (delivered, not yet acked), the age of the
oldest pending one, the entries waiting in the delayed set, and the open dead letters of the
stream's subsystem partition (those an operator has retried or archived are not counted).
On a cluster also the partition's outbox lag: outputs for other slots its bots committed
that the relay has not forwarded yet, and the age of the oldest (a relay that stays behind,
or none running, shows here first).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import redis
from redis.exceptions import ResponseError

from streamcqrs.handlers.delivery import Source, sources
from streamcqrs.handlers.registry import App
from streamcqrs.streams.cli import connect, open_count
from streamcqrs.streams.envelope import as_str, entries
from streamcqrs.streams.keys import PartitionKeys


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """One consumer group on one stream partition."""

    stream: str
    group: str
    length: int
    lag: int | None
    pending: int
    oldest_pending_s: float | None
    consumers: int
    delayed: int
    dead_letters: int
    outbox: int = 0
    """Entries of the partition's outbox not yet forwarded by a relay (cluster)."""
    outbox_oldest_s: float | None = None


def _ms_of(entry_id: Any) -> int:
    return int(as_str(entry_id).partition("-")[0])


def group_status(client: redis.Redis, source: Source) -> GroupStatus:
    """The figures of one source (a missing stream or group reads as empty)."""
    length = int(client.xlen(source.key))
    delayed = int(client.zcard(source.part.delayed(source.ref.kind)))
    dead = open_count(client, source.part)
    lag: int | None = length
    pending, consumers, oldest = 0, 0, None
    try:
        groups = client.xinfo_groups(source.key)
    except ResponseError:  # no such stream yet
        groups = []
    for info in groups:
        if as_str(info["name"]) != source.group:
            continue
        raw_lag = info.get("lag")
        lag = None if raw_lag is None else int(raw_lag)
        pending, consumers = int(info["pending"]), int(info["consumers"])
        if pending:
            first = client.xpending_range(source.key, source.group, "-", "+", 1)
            if first:
                oldest = max(0.0, time.time() - _ms_of(first[0]["message_id"]) / 1000)
        break
    waiting, oldest_out = outbox_lag(client, source.part)
    return GroupStatus(
        source.key, source.group, length, lag, pending,
        None if oldest is None else round(oldest, 3), consumers, delayed, dead,
        waiting, oldest_out,
    )  # fmt: skip


def outbox_lag(client: redis.Redis, part: PartitionKeys) -> tuple[int, float | None]:
    """Entries in ``part``'s outbox, and the age in seconds of the oldest (None: empty)."""
    waiting = int(client.xlen(part.outbox))
    if not waiting:
        return 0, None
    first = entries(client.xrange(part.outbox, "-", "+", count=1))
    if not first:
        return waiting, None
    return waiting, round(max(0.0, time.time() - _ms_of(first[0][0]) / 1000), 3)


def app_status(client: redis.Redis, app: App) -> list[GroupStatus]:
    """Every group of ``app``, in a stable order."""
    return [group_status(client, source) for source in sources(app)]


def render(rows: list[GroupStatus]) -> str:
    """The rows as an aligned text table."""
    head = ("stream", "group", "length", "lag", "pending", "oldest_s", "consumers", "delayed",
            "dead", "outbox", "outbox_s")  # fmt: skip
    body = [
        (r.stream, r.group, str(r.length), "?" if r.lag is None else str(r.lag), str(r.pending),
         "" if r.oldest_pending_s is None else f"{r.oldest_pending_s:.1f}", str(r.consumers),
         str(r.delayed), str(r.dead_letters), str(r.outbox),
         "" if r.outbox_oldest_s is None else f"{r.outbox_oldest_s:.1f}")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in [head, *body])  # fmt: skip


def report(args: argparse.Namespace, out: TextIO) -> int:
    """Print the status of the groups of ``args.app`` on ``args.url``; the exit status."""
    app = App.load(args.app)
    client = connect(args)
    try:
        rows = app_status(client, app)
    finally:
        client.close()
    out.write(json.dumps([asdict(r) for r in rows], indent=2) if args.json else render(rows))
    out.write("\n")
    return 0


__all__ = ["GroupStatus", "app_status", "group_status", "outbox_lag", "render", "report"]
