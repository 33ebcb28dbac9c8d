"""``tail``, ``show`` and ``replay``: look at a stream's records, and put them again."""

from __future__ import annotations

import argparse
import asyncio
import heapq
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, TextIO, cast

import redis

from streamcqrs.domain.ids import new_message_id
from streamcqrs.streams import now_ms
from streamcqrs.streams.cli._cleaned import explain_missing, status_note
from streamcqrs.streams.cli._common import (
    CommandError,
    connect,
    connect_async,
    describe,
    emit,
    existing,
    iso,
    moment,
    part_for,
    partitions,
    sort_key,
    stream_entries,
    stream_ref,
    with_data,
)
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.connection import is_cluster
from streamcqrs.streams.envelope import Entry, as_str, entries, parse, script_entry
from streamcqrs.streams.errors import DecodeError
from streamcqrs.streams.handling import HandlingStore
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.scripts import script

_ENTRY_ID = re.compile(r"^\d+-\d+$")
_MESSAGE_ID = re.compile(r"^[0-9a-f]{32}$")
Located = tuple[str, str, dict[bytes, bytes]]
"""(stream key, entry id, raw fields) of one stored entry."""


def add_parsers(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register tail, show and replay on the CLI's subcommands."""
    tail = commands.add_parser(
        "tail",
        parents=parents,
        help="print a stream's newest records, and follow new ones",
        description="Print the newest records of SUBSYSTEM/KIND (over all its partitions, "
        "in stream order), decoded; with --follow keep printing new ones until Ctrl-C.",
    )
    tail.add_argument("stream", type=stream_ref, help="SUBSYSTEM/KIND, e.g. email/events")
    tail.add_argument(
        "-n", "--count", type=int, default=None,
        help="how many records to print first (default 10; with --since, all since then)",
    )  # fmt: skip
    tail.add_argument(
        "-f", "--follow", action="store_true",
        help="keep printing new records until Ctrl-C (give --partitions: a partition with "
        "no data yet is not detected)",
    )  # fmt: skip
    tail.add_argument("--since", type=moment, help="start at this time (ms, ISO 8601, or 10m)")
    tail.set_defaults(func=tail_command)

    show = commands.add_parser(
        "show",
        parents=parents,
        help="show one record: its envelope, payload and handling by each concern",
        description="Find a record of SUBSYSTEM/KIND by entry id (1700000000000-0), message "
        "id (32 hex) or object id (its latest record), and print it with, for each consumer "
        "group (concern), whether the group has read it, is still handling it (pending), "
        "and its handling history.",
    )
    show.add_argument("stream", type=stream_ref, help="SUBSYSTEM/KIND the record is in")
    show.add_argument("id", help="entry id, message id or object id of the record")
    show.add_argument(
        "--by", choices=("auto", "entry", "message", "object"), default="auto",
        help="how to read ID (default: entry id if it looks like one, else message id if 32 "
        "hex chars, else object id)",
    )  # fmt: skip
    show.add_argument(
        "--partition", type=int, default=None,
        help="look for an entry id in this partition only (the same entry id can be in "
        "several partitions)",
    )  # fmt: skip
    show.set_defaults(func=show_command)

    replay = commands.add_parser(
        "replay",
        parents=parents,
        help="put a stream's records from a time on again, into it or another stream",
        description="Read the records of SOURCE written in [--since, --until] and put each "
        "again into --to (which may be SOURCE itself), in order. Message ids are kept, so "
        "handlers' de-duplication makes a replay of already handled records change nothing; "
        "--new-ids gives each a fresh id (its causation id names the original).",
    )
    replay.add_argument("stream", type=stream_ref, help="SOURCE stream, SUBSYSTEM/KIND")
    replay.add_argument(
        "--since", type=moment, required=True, help="replay records written at or after this"
    )
    replay.add_argument("--until", type=moment, help="and at or before this (default: now)")
    replay.add_argument(
        "--to", type=stream_ref, required=True,
        help="target stream, SUBSYSTEM/KIND (say SOURCE again to replay into it)",
    )  # fmt: skip
    replay.add_argument(
        "--to-partitions", type=int, default=None,
        help="partition count of the target (default: as detected for the target, else "
        "the source's)",
    )  # fmt: skip
    replay.add_argument(
        "--new-ids", action="store_true", help="give replayed records fresh message ids"
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="print what would be replayed; write nothing"
    )
    replay.set_defaults(func=replay_command)


# -- reading -------------------------------------------------------------------------------


def merged(streams: list[Iterator[Located]]) -> Iterator[Located]:
    """Entries of several partitions in stream order."""
    return heapq.merge(*streams, key=lambda e: sort_key(e[1]))


def located(key: str, found: list[Entry]) -> Iterator[Located]:
    """Entries of one stream key, with the key beside each."""
    for entry_id, raw in found:
        yield key, as_str(entry_id), raw


def newest(
    client: redis.Redis, keys: SubsystemKeys, kind: Kind, count: int, ends: dict[str, str]
) -> list[Located]:
    """The newest ``count`` entries up to ``ends`` (per stream key), oldest first."""
    found: list[Located] = []
    for part in keys.all():
        key = part.stream(kind)
        found += located(key, entries(client.xrevrange(key, ends[key], "-", count=count)))
    found.sort(key=lambda e: sort_key(e[1]))
    return found[-count:] if count else []


def since(
    client: redis.Redis, keys: SubsystemKeys, kind: Kind, low_ms: int, high: str = "+"
) -> Iterator[Located]:
    """Entries written at or after ``low_ms`` (up to entry id ``high``), in stream order."""
    streams = []
    for part in keys.all():
        key = part.stream(kind)
        streams.append(located_pages(client, key, f"{low_ms}-0", high))
    return merged(streams)


def located_pages(client: redis.Redis, key: str, low: str, high: str) -> Iterator[Located]:
    """``stream_entries`` with the key beside each entry."""
    for entry_id, raw in stream_entries(client, key, low, high):
        yield key, as_str(entry_id), raw


def tail_command(args: argparse.Namespace, out: TextIO) -> int:
    """``tail``: the newest records, then (``--follow``) new ones until Ctrl-C."""
    client = connect(args)
    subsystem, kind = args.stream
    if args.follow and args.partitions is None and not with_data(client, subsystem):
        sys.stderr.write(f"no streams of {subsystem} yet; waiting for its first record\n")
    if args.follow:
        keys = SubsystemKeys(subsystem, partitions(client, subsystem, kind, args.partitions))
    else:
        keys = existing(client, subsystem, kind, args.partitions)
    # Fix where the backlog ends before reading it: following starts exactly there, so a
    # record written meanwhile is printed once, by the follow loop.
    ends = {p.stream(kind): _last_id(client, p.stream(kind)) or "0-0" for p in keys.all()}
    if args.since is not None:
        backlog: list[Located] = [
            e
            for e in since(client, keys, kind, args.since)
            if sort_key(e[1]) <= sort_key(ends[e[0]])
        ]
        if args.count is not None:
            backlog = backlog[: args.count]
    else:
        backlog = newest(client, keys, kind, 10 if args.count is None else args.count, ends)
    emit(out, (describe(*e) for e in backlog), args.json)
    if not args.follow:
        return 0
    if args.partitions is None:
        sys.stderr.write(
            f"following {keys.partitions} partition(s) of {subsystem} (detected); pass "
            "--partitions if it has more\n"
        )
    return _follow(client, dict(ends), out, args.json)


def _follow(client: redis.Redis, cursors: dict[str, str], out: TextIO, as_json: bool) -> int:
    """Print each new record after ``cursors`` until Ctrl-C or SIGTERM; exit status 0."""
    # Ctrl-C, or SIGTERM, ends following with status 0, also when the shell that started us
    # ignores SIGINT (a background job without job control: Python then leaves it ignored).
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.default_int_handler)
    try:
        while True:
            reply = _read_new(client, cursors)
            for raw_key, found in cast(list[tuple[bytes, list[Entry]]], reply or []):
                key = as_str(raw_key)
                for entry in located(key, found):
                    cursors[key] = entry[1]
                    emit(out, [describe(*entry)], as_json)
    except KeyboardInterrupt:
        return 0


def _read_new(client: redis.Redis, cursors: dict[str, str]) -> Any:
    """New entries after ``cursors``: one XREAD blocking up to a second; on a cluster, where
    one XREAD may not name several slots, one look per partition, then a pause if none had
    anything."""
    if not is_cluster(client) or len(cursors) == 1:
        return client.xread(cast(Any, cursors), block=1000)
    found: list[Any] = []
    for key, cursor in cursors.items():
        found += client.xread({key: cursor}) or []
    if not found:
        time.sleep(0.1)
    return found


# -- show ----------------------------------------------------------------------------------


def guess(ident: str) -> str:
    """How to read an id given without ``--by``: entry id, message id, else object id."""
    if _ENTRY_ID.match(ident):
        return "entry"
    return "message" if _MESSAGE_ID.match(ident) else "object"


def find(
    client: redis.Redis,
    keys: SubsystemKeys,
    kind: Kind,
    ident: str,
    by: str,
    *,
    partition: int | None = None,
) -> Located | None:
    """The entry ``ident`` names (entry id, message id, or object id's latest), or None."""
    by = guess(ident) if by == "auto" else by
    if by == "entry":
        return _by_entry(client, keys, kind, ident, partition)
    if by == "object":
        part = keys.for_object(ident)
        key = part.stream(kind)
        reply = script("latest").run_sync(client, [part.index(kind), key], [ident])
        if not reply:
            return None
        entry_id, raw = script_entry(reply)
        return key, as_str(entry_id), raw
    # No index by message id: one pass over the stream (an operator's lookup, not a hot path).
    for part in keys.all():
        key = part.stream(kind)
        for entry_id, raw in stream_entries(client, key):
            if raw.get(b"id") == ident.encode():
                return key, as_str(entry_id), raw
    return None


def _by_entry(
    client: redis.Redis, keys: SubsystemKeys, kind: Kind, ident: str, partition: int | None
) -> Located | None:
    # Each partition numbers its entries by its own clock: one id may be in several.
    parts = keys.all() if partition is None else [keys.partition(partition)]
    found = [
        each
        for part in parts
        for each in located(
            part.stream(kind), entries(client.xrange(part.stream(kind), ident, ident))
        )
    ]
    if len(found) > 1:
        where = ", ".join(key for key, _, _ in found)
        raise CommandError(f"entry {ident} is in several partitions ({where}); pass --partition N")
    return found[0] if found else None


def concerns(client: redis.Redis, key: str, entry_id: str) -> list[dict[str, Any]]:
    """Each consumer group (concern) of ``key``: has it read the entry, is it still pending.

    A group created after the entry (at ``$``) counts as having read it: it never will.
    """
    out = []
    groups: list[dict[str, Any]] = client.xinfo_groups(key) if client.exists(key) else []
    for group in groups:
        name = as_str(group["name"])
        last = as_str(group["last-delivered-id"])
        pending = cast(
            list[dict[str, Any]],
            client.xpending_range(key, name, min=entry_id, max=entry_id, count=1),
        )
        row: dict[str, Any] = {
            "concern": name,
            "read": sort_key(entry_id) <= sort_key(last),
            "pending": bool(pending),
        }
        if pending:
            row["consumer"] = as_str(pending[0]["consumer"])
            row["deliveries"] = pending[0]["times_delivered"]
        out.append(row)
    return out


async def _handling(
    args: argparse.Namespace, keys: SubsystemKeys, kind: Kind, record: dict[str, Any]
) -> None:
    """Add each concern's handling status and history of ``record`` to its row."""
    client = connect_async(args)
    try:
        for row in record["handling"]:
            store = HandlingStore(client, keys, kind, row["concern"])
            status = await store.status(record["id"], record["obj"] or None)
            history = await store.history(record["id"], record["obj"] or None)
            row["status"] = status.value
            row["history"] = [
                {"at": iso(h.at_ms), "status": h.status.value, "action": h.action.value,
                 "details": h.details, "actor": h.actor}
                for h in history
            ]  # fmt: skip
    finally:
        await client.aclose()


def show_command(args: argparse.Namespace, out: TextIO) -> int:
    """``show``: one record, and what each concern did with it."""
    client = connect(args)
    subsystem, kind = args.stream
    keys = existing(client, subsystem, kind, args.partitions)
    found = find(client, keys, kind, args.id, args.by, partition=args.partition)
    if found is None and (gone := explain_missing(
        client, keys, kind, args.id, guess(args.id) if args.by == "auto" else args.by
    )):  # fmt: skip
        return _show_cleaned(gone, args.json, out)
    if found is None:
        raise CommandError(
            f"no record {args.id!r} in {subsystem}/{kind} (looked up by {args.by}); "
            "try --by entry|message|object, or --partitions if the count was not detected"
        )
    record = describe(*found)
    record["handling"] = concerns(client, found[0], found[1])
    if "id" in record:
        asyncio.run(_handling(args, keys, kind, record))
        part = part_for(keys, parse(found[0], found[1], found[2]))
        for row in record["handling"]:
            status_note(client, part, kind, row, found[1])
    if args.json:
        emit(out, [record], True)
        return 0
    emit(out, [record], False)
    for row in record["handling"]:
        state = "pending" if row["pending"] else "read" if row["read"] else "not read yet"
        extra = (
            f" (consumer {row['consumer']}, {row['deliveries']} deliveries)"
            if row["pending"]
            else ""
        )
        status = f"  status {row['status']}" if "status" in row else ""
        note = f" ({row['note']})" if "note" in row else ""
        out.write(f"  {row['concern']}: {state}{extra}{status}{note}\n")
        for step in row.get("history", []):
            line = f"    {step['at']}  {step['action']} -> {step['status']}  {step['actor']}"
            out.write(f"{line}  {step['details']}".rstrip() + "\n")
    if not record["handling"]:
        out.write("  no consumer group reads this stream yet\n")
    return 0


def _show_cleaned(gone: dict[str, Any], as_json: bool, out: TextIO) -> int:
    """``show`` of a record the cleaner trimmed: say so, with the handling left."""
    if as_json:
        emit(out, [gone], True)
        return 0
    maybe = "" if gone.get("definite", True) else " if it existed, it was older: "
    out.write(f"{gone['id']}: cleaned;{maybe} {gone['note']}\n")
    for row in gone.get("handling", []):
        out.write(f"  {row['concern']}: status {row['status']} (kept: not done)\n")
        for step in row["history"]:
            line = f"    {step['at']}  {step['action']} -> {step['status']}  {step['actor']}"
            out.write(f"{line}  {step['details']}".rstrip() + "\n")
    return 0


# -- replay --------------------------------------------------------------------------------


def replay_command(args: argparse.Namespace, out: TextIO) -> int:
    """``replay``: put a time range of a stream's records again, into it or another."""
    client = connect(args)
    subsystem, kind = args.stream
    target_sub, target_kind = args.to
    keys = existing(client, subsystem, kind, args.partitions)
    detected = partitions(client, target_sub, target_kind, args.to_partitions)
    if args.to_partitions is None and target_sub == subsystem:
        detected = max(detected, keys.partitions)
    target = SubsystemKeys(target_sub, detected)
    # Fix the end now: replaying into the source must not replay its own new entries.
    high = f"{args.until}-18446744073709551615" if args.until is not None else "+"
    ends = {p.stream(kind): _last_id(client, p.stream(kind)) for p in keys.all()}
    replayed = skipped = 0
    for key, entry_id, raw in since(client, keys, kind, args.since, high):
        if ends[key] is None or sort_key(entry_id) > sort_key(cast(str, ends[key])):
            continue
        try:
            envelope = parse(key, entry_id, raw)
        except DecodeError as exc:
            out.write(f"skipped {key} {entry_id}: {exc.reason}\n")
            skipped += 1
            continue
        if args.new_ids:
            envelope = replace(
                envelope,
                message_id=new_message_id(),
                causation_id=envelope.message_id,
                created_at=now_ms(),
            )
        if args.dry_run:
            emit(out, [describe(key, entry_id, raw)], args.json)
        else:
            batch = Commit()
            batch.put_at(part_for(target, envelope), target_kind, envelope)
            batch.run_sync(client)
        replayed += 1
    verb = "would replay" if args.dry_run else "replayed"
    out.write(
        f"{verb} {replayed} records of {subsystem}/{kind} into {target_sub}/{target_kind}"
        + (f"; skipped {skipped} unreadable" if skipped else "")
        + "\n"
    )
    return 0


def _last_id(client: redis.Redis, key: str) -> str | None:
    last = entries(client.xrevrange(key, "+", "-", count=1))
    return as_str(last[0][0]) if last else None
