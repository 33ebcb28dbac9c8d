"""``failed``: records whose handling Failed for a concern, retried or archived.

A record is Failed for a concern when its handler failed every attempt (the bot then also
dead-lettered it). Retrying resets it (Failed -> AvailableAfterFailure) and puts it back for
that concern only; archiving sets ArchivedAfterFailure. Either marks its dead letter too, in
the same atomic commit (see ``_deadletters``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, TextIO

import redis

from streamcqrs.streams.cli._common import (
    CommandError,
    connect,
    emit,
    existing,
    stream_entries,
    stream_ref,
)
from streamcqrs.streams.cli._deadletters import Found, actor, dead_letters, mark, put_back
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.envelope import Envelope, as_str, parse
from streamcqrs.streams.errors import DecodeError
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys
from streamcqrs.streams.statuses import Action, Status, decode_stored


def add_parsers(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``failed`` on the CLI's subcommands."""
    failed = commands.add_parser(
        "failed",
        help="list, retry or archive records whose handling Failed for a concern",
        description="Records of SUBSYSTEM/KIND whose handling status for --concern is "
        "Failed (every attempt failed). 'retry' resets them (AvailableAfterFailure) and "
        "puts them back for that concern; 'archive' sets ArchivedAfterFailure.",
    )
    actions = failed.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, what in (
        ("list", "show the Failed records"),
        ("retry", "reset and put back Failed records"),
        ("archive", "archive Failed records"),
    ):
        action = actions.add_parser(name, parents=parents, help=what, description=what + ".")
        action.add_argument("stream", type=stream_ref, help="SUBSYSTEM/KIND, e.g. email/client-ops")
        action.add_argument(
            "--concern", required=True, help="the concern (consumer group) that failed them"
        )
        if name != "list":
            action.add_argument(
                "ids", nargs="*", metavar="ID", help="records (message ids) to act on"
            )
            action.add_argument("--all", action="store_true", help="every Failed record")
        action.set_defaults(func=failed_command, act=name)


@dataclass(frozen=True, slots=True)
class FailedRecord:
    """A record Failed for a concern, with its dead letter and original entry when found."""

    part: PartitionKeys
    record: str
    reason: str
    letter: Found | None
    envelope: Envelope | None


def failed_records(
    client: redis.Redis, keys: SubsystemKeys, kind: Kind, concern: str, out: TextIO
) -> list[FailedRecord]:
    """Every record whose status for ``concern`` is Failed, over all partitions."""
    found: list[FailedRecord] = []
    letters = {
        (f.letter.message_id, f.letter.concern): f
        for f in dead_letters(client, keys, out)
        if f.state == "open"
    }
    for part in keys.all():
        statuses = part.handling_status(kind, concern)
        histories = {
            as_str(record): history
            for record, value in client.hscan_iter(statuses)
            for status, history in [decode_stored(value)]
            if status is Status.FAILED
        }
        records = list(histories)
        if not records:
            continue
        originals = _originals(client, part, kind, set(records))
        for record in sorted(records):
            history = histories[record]
            last = history[-1].details if history else ""
            letter = letters.get((record, concern))
            envelope = originals.get(record)
            if envelope is None and letter is not None:
                try:
                    envelope = parse(
                        letter.letter.stream, letter.letter.entry_id, letter.letter.raw
                    )
                except DecodeError:
                    envelope = None
            reason = letter.letter.reason if letter else last
            found.append(FailedRecord(part, record, reason, letter, envelope))
    return found


def _originals(
    client: redis.Redis, part: PartitionKeys, kind: Kind, records: set[str]
) -> dict[str, Envelope]:
    """The entries of ``records`` (message ids) in one partition's stream (one pass)."""
    key = part.stream(kind)
    out: dict[str, Envelope] = {}
    for raw_id, raw in stream_entries(client, key):
        message_id = raw.get(b"id", b"").decode(errors="replace")
        if message_id in records and message_id not in out:
            try:
                out[message_id] = parse(key, as_str(raw_id), raw)
            except DecodeError:
                continue
    return out


def failed_command(args: argparse.Namespace, out: TextIO) -> int:
    """``failed list|retry|archive``: Failed records of a stream for a concern."""
    client = connect(args)
    subsystem, kind = args.stream
    keys = existing(client, subsystem, kind, args.partitions)
    records = failed_records(client, keys, kind, args.concern, out)
    where = f"for {args.concern} on {subsystem}/{kind}"
    if args.act == "list":
        rows = [_row(r) for r in records]
        if args.json:
            emit(out, rows, True)
            return 0
        for row in rows:
            out.write(f"{row['id']}  obj={row['obj']}  {row['type']}  {row['reason']}\n")
        out.write(f"{len(rows)} record(s) Failed {where}\n")
        return 0
    if not args.ids and not args.all:
        raise CommandError("name the records to act on (message ids), or pass --all")
    chosen = [r for r in records if args.all or r.record in args.ids]
    missing = set(args.ids) - {r.record for r in chosen}
    if missing:
        raise CommandError(f"not Failed {where}: {sorted(missing)}; see 'failed list'")
    for each in chosen:
        batch = Commit()
        if args.act == "archive":
            archive(batch, each, kind, args.concern)
        else:
            retry(batch, each, kind, args.concern)
        batch.run_sync(client)
        out.write(f"{args.act} {each.record}\n")
    done = "archived" if args.act == "archive" else "retried"
    out.write(f"{len(chosen)} record(s) {done} {where}\n")
    return 0


def _row(record: FailedRecord) -> dict[str, Any]:
    envelope, letter = record.envelope, record.letter
    return {
        "id": record.record,
        "obj": envelope.object_id if envelope else "",
        "type": envelope.type if envelope else "",
        "reason": record.reason,
        "attempts": letter.letter.attempts if letter else None,
        "dead_letter": letter.id if letter else None,
    }


def archive(batch: Commit, record: FailedRecord, kind: Kind, concern: str) -> None:
    """Add Failed -> ArchivedAfterFailure (and its dead letter's mark) to ``batch``."""
    batch.settle(Action.ARCHIVE_FAILURE, details="archived by an operator", actor=actor(),
                 record=(record.part, kind, concern, record.record))  # fmt: skip
    if record.letter is not None:
        mark(batch, record.letter, Status.ARCHIVED_AFTER_FAILURE, Action.ARCHIVE_FAILURE,
             "archived with its Failed record")  # fmt: skip


def retry(batch: Commit, record: FailedRecord, kind: Kind, concern: str) -> None:
    """Add Failed -> AvailableAfterFailure, the dead letter's mark and the entry put back for
    ``concern`` to ``batch``."""
    if record.envelope is None:
        raise CommandError(
            f"record {record.record} is no longer in its stream and has no dead letter to take "
            "it from (trimmed?); archive it instead"
        )
    batch.settle(Action.RESET_FAILED, details="retried by an operator", actor=actor(),
                 record=(record.part, kind, concern, record.record))  # fmt: skip
    if record.letter is not None:
        mark(batch, record.letter, Status.COMPLETED, Action.COMPLETE,
             "retried with its Failed record")  # fmt: skip
    put_back(batch, record.part, kind, record.envelope, concern)
