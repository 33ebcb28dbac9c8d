"""``dead-letters``: what bots could not handle, listed, put back, or put away.

A dead letter (``streams.deadletter``) keeps the original entry's bytes, why it failed, the
concern and the attempts. Whether an operator has dealt with it is kept in the dead-letter
stream's own handling store, under the concern ``operator``: open (no status yet), retried
(Completed) or archived (ArchivedAfterFailure), each change with its history entry. Every
operator action is one atomic commit in the partition of the original entry: the dead
letter's mark, the original record's status (Failed -> AvailableAfterFailure on retry,
Failed -> ArchivedAfterFailure on archive) and the entry put back, all or nothing.

A retried Failed record is parked in its stream's delayed set, due at once, for its concern
only: the bot consuming that stream moves it in within its mover interval, and only that
concern handles it again (the others already have). A dead letter of bad input (never
claimed by any concern) is put straight back into its stream for every consumer.
"""

from __future__ import annotations

import argparse
import getpass
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import redis

from streamcqrs.streams import now_ms
from streamcqrs.streams.cli._common import (
    PAGE,
    CommandError,
    connect,
    describe,
    emit,
    existing,
    iso,
    stream_entries,
    subsystem_name,
)
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.deadletter import KIND as DEAD
from streamcqrs.streams.deadletter import DeadLetter, decode_dead_letter
from streamcqrs.streams.delayed import Delayed
from streamcqrs.streams.envelope import Envelope, as_str, parse
from streamcqrs.streams.errors import DecodeError
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys
from streamcqrs.streams.statuses import CLAIMABLE, Action, Status, decode_stored

OPERATOR = "operator"
"""The concern under which the dead-letter stream's own handling (retried, archived) is kept."""
STATES = {Status.COMPLETED.value: "retried", Status.ARCHIVED_AFTER_FAILURE.value: "archived"}
_STREAM_KEY = re.compile(r"^\{(?P<sub>[^{}]+)\.(?P<part>\d+)\}:(?P<kind>[a-z-]+)$")


def add_parsers(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``dead-letters`` on the CLI's subcommands."""
    dead = commands.add_parser(
        "dead-letters",
        help="list, retry or archive a subsystem's dead letters",
        description="Entries a bot could not handle: bad input, or a handler that failed "
        "every attempt. 'list' shows each with its reason, attempts and original; 'retry' "
        "puts the original back (for its concern only) and marks the dead letter retried; "
        "'archive' marks it archived (and a Failed record ArchivedAfterFailure).",
    )
    actions = dead.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list", parents=parents, help="show open dead letters (--all: every one)",
        description="Show each dead letter of SUBSYSTEM: id, when, concern, attempts, "
        "reason, the original stream and entry, and the original decoded.",
    )  # fmt: skip
    listing.add_argument("subsystem", type=subsystem_name, help="the subsystem, e.g. email")
    listing.add_argument(
        "--all", action="store_true", help="also those already retried or archived"
    )
    listing.add_argument("--traceback", action="store_true", help="print each traceback too")
    listing.set_defaults(func=dead_list_command)
    for name, verb in (("retry", "put back into its stream"), ("archive", "archive")):
        action = actions.add_parser(
            name, parents=parents, help=f"{verb} dead letters by id (or --all open ones)",
            description=f"{verb.capitalize()} the named dead letters of SUBSYSTEM (ids as "
            "'list' prints them: the original message id).",
        )  # fmt: skip
        action.add_argument("subsystem", type=subsystem_name, help="the subsystem, e.g. email")
        action.add_argument(
            "ids", nargs="*", metavar="ID", help="dead letters to act on, as 'list' names them"
        )
        action.add_argument("--all", action="store_true", help="every open dead letter")
        action.set_defaults(func=dead_act_command, act=name)


def actor() -> str:
    """Who acts, for history entries: the operator's login on this host."""
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


def origin(stream_key: str) -> tuple[PartitionKeys, Kind]:
    """The partition and kind of a stream key (``{email.0}:client-ops``)."""
    found = _STREAM_KEY.match(stream_key)
    if found is None:
        raise CommandError(f"{stream_key!r} is not a stream key of this framework")
    try:
        kind = Kind(found["kind"])
    except ValueError:
        raise CommandError(f"{stream_key!r} names no stream kind") from None
    return PartitionKeys(found["sub"], int(found["part"])), kind


# -- dead letters ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    """One dead letter as stored: where, its own record id, its mark, what it says."""

    part: PartitionKeys
    entry_id: str
    record: str
    state: str
    letter: DeadLetter

    @property
    def id(self) -> str:
        """How operators name it: the original message id (entry id for junk without one)."""
        return self.letter.message_id or self.letter.entry_id


def dead_letters(client: redis.Redis, keys: SubsystemKeys, out: TextIO) -> Iterator[Found]:
    """Every dead letter of every partition, with its mark; junk in the stream is reported."""
    for part in keys.all():
        key = part.stream(DEAD)
        marks = part.handling_status(DEAD, OPERATOR)
        for raw_id, raw in stream_entries(client, key):
            entry_id = as_str(raw_id)
            try:
                stored = decode_dead_letter(key, entry_id, raw)
                record = parse(key, entry_id, raw).message_id
            except DecodeError as exc:
                out.write(f"# skipped entry {entry_id} of {key}: {exc.reason}\n")
                continue
            stored_mark = client.hget(marks, record)
            mark = decode_stored(stored_mark)[0].value if stored_mark else None
            state = STATES.get(mark, mark) if mark else "open"
            yield Found(part, entry_id, record, state, stored.letter)


def open_count(client: redis.Redis, part: PartitionKeys) -> int:
    """How many dead letters of one partition are open: neither retried nor archived."""
    marks = part.handling_status(DEAD, OPERATOR)
    records = [raw.get(b"id", b"") for _, raw in stream_entries(client, part.stream(DEAD))]
    if not records:
        return 0
    marked = 0
    for start in range(0, len(records), PAGE):
        chunk = records[start : start + PAGE]
        marked += sum(1 for m in client.hmget(marks, chunk) if m is not None)
    return len(records) - marked


def _row(found: Found, with_traceback: bool) -> dict[str, Any]:
    letter = found.letter
    row: dict[str, Any] = {
        "id": found.id,
        "state": found.state,
        "at": iso(letter.at) if letter.at else "",
        "concern": letter.concern,
        "attempts": letter.attempts,
        "error": letter.error_type,
        "reason": letter.reason,
        "stream": letter.stream,
        "entry": letter.entry_id,
        "dead_letter": f"{found.part.stream(DEAD)} {found.entry_id}",
        "original": describe(letter.stream, letter.entry_id or "0-0", letter.raw),
    }
    if with_traceback:
        row["traceback"] = letter.traceback
    return row


def dead_list_command(args: argparse.Namespace, out: TextIO) -> int:
    """``dead-letters list``: each (open) dead letter with why, how often, and the original."""
    client = connect(args)
    keys = existing(client, args.subsystem, DEAD, args.partitions)
    rows = [
        _row(found, args.traceback)
        for found in dead_letters(client, keys, out)
        if args.all or found.state == "open"
    ]
    if args.json:
        emit(out, rows, True)
        return 0
    for row in rows:
        original = row["original"]
        what = original.get("type", "unreadable entry")
        concern = f" concern={row['concern']}" if row["concern"] else ""
        out.write(
            f"{row['id']}  [{row['state']}]  {row['at']}{concern} attempts={row['attempts']}  "
            f"{row['error']}: {row['reason']}\n"
            f"    original: {row['stream']} {row['entry']}  {what}  "
            f"data={original.get('data', original.get('fields'))}\n"
        )
        if args.traceback and row["traceback"]:
            out.write("    " + row["traceback"].replace("\n", "\n    ").rstrip() + "\n")
    out.write(f"{len(rows)} dead letter(s)\n")
    return 0


def mark(batch: Commit, found: Found, to: Status, action: Action, details: str) -> None:
    """Add the dead letter's mark (retried or archived) to ``batch``; only from open."""
    del to  # the action's own status: Completed for a retry, ArchivedAfterFailure for archive
    batch.settle(action, details=details, actor=actor(),
                 record=(found.part, DEAD, OPERATOR, found.record),
                 allowed_from=sorted(CLAIMABLE), label=f"{action.value} dead letter")  # fmt: skip


def put_back(
    batch: Commit, part: PartitionKeys, kind: Kind, envelope: Envelope, concern: str
) -> None:
    """Put an entry back into its stream: for one concern through the delayed set (due now),
    or for every consumer directly."""
    if concern:
        member = Delayed(kind.value, envelope, concern=concern).pack()
        batch.delay(part.delayed(kind), now_ms(), member)
    else:
        batch.put_at(part, kind, envelope)


def _original_status(
    client: redis.Redis, part: PartitionKeys, kind: Kind, concern: str, record: str
) -> str:
    found = client.hget(part.handling_status(kind, concern), record)
    return decode_stored(found)[0].value


def act_on_dead_letter(client: redis.Redis, found: Found, act: str) -> str:
    """Retry or archive one dead letter in one commit; say what was done."""
    if found.state != "open":
        raise CommandError(f"dead letter {found.id} is already {found.state}")
    letter = found.letter
    part, kind = origin(letter.stream)
    batch = Commit()
    failed = bool(letter.concern and letter.message_id) and (
        _original_status(client, part, kind, letter.concern, letter.message_id)
        == Status.FAILED.value
    )
    if act == "archive":
        mark(batch, found, Status.ARCHIVED_AFTER_FAILURE, Action.ARCHIVE_FAILURE, "archived")
        if failed:
            batch.settle(Action.ARCHIVE_FAILURE, details="archived from its dead letter",
                         actor=actor(), record=(part, kind, letter.concern, letter.message_id))
        batch.run_sync(client)
        return f"archived {found.id}" + (
            f" ({letter.concern}: ArchivedAfterFailure)" if failed else ""
        )
    try:
        envelope = parse(letter.stream, letter.entry_id, letter.raw)
    except DecodeError as exc:
        raise CommandError(
            f"dead letter {found.id} holds no envelope to put back ({exc.reason}); archive it"
        ) from None
    mark(batch, found, Status.COMPLETED, Action.COMPLETE, "retried")
    if failed:
        batch.settle(Action.RESET_FAILED, details="retried from its dead letter", actor=actor(),
                     record=(part, kind, letter.concern, letter.message_id))
    # A handler's failure is retried for its concern only; bad input (never claimed) was
    # bad for every consumer of the stream, so it goes back to all of them.
    concern = letter.concern if failed else ""
    put_back(batch, part, kind, envelope, concern)
    batch.run_sync(client)
    where = f"{part.subsystem}/{kind}"
    return f"retried {found.id} into {where}" + (f" for {concern}" if concern else "")


def chosen_letters(found: list[Found], ids: list[str], every_open: bool) -> list[Found]:
    """The dead letters to act on: per named id its open letter(s), or every open one.

    One message can have several dead letters: retried, it may fail again and get a new,
    open one under the same id. The open ones are the ones to act on; an id with none open
    says what became of its last one (CommandError), and an unknown id says so.
    """
    if every_open:
        return [f for f in found if f.state == "open"]
    chosen: list[Found] = []
    for ident in dict.fromkeys(ids):
        same = [f for f in found if f.id == ident]
        if not same:
            continue
        open_ones = [f for f in same if f.state == "open"]
        if not open_ones:
            raise CommandError(
                f"dead letter {ident} is already {same[-1].state}; see 'dead-letters list "
                "--all'"
            )
        chosen += open_ones
    missing = [i for i in dict.fromkeys(ids) if not any(f.id == i for f in found)]
    if missing:
        raise CommandError(f"no dead letter {missing} in this subsystem; see 'list'")
    return chosen


def dead_act_command(args: argparse.Namespace, out: TextIO) -> int:
    """``dead-letters retry|archive``: act on the named (or all open) dead letters."""
    if not args.ids and not args.all:
        raise CommandError("name the dead letters to act on (ids from 'list'), or pass --all")
    client = connect(args)
    keys = existing(client, args.subsystem, DEAD, args.partitions)
    chosen = chosen_letters(list(dead_letters(client, keys, out)), args.ids, args.all)
    for found in chosen:
        out.write(act_on_dead_letter(client, found, args.act) + "\n")
    done = "archived" if args.act == "archive" else "retried"
    out.write(f"{len(chosen)} dead letter(s) {done}\n")
    return 0
