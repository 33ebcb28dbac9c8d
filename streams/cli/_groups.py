"""``groups``: list consumer groups, create one where it should start, or move one.

A concern's consumer group is created by its bots where its handlers say (the beginning, now,
or a time); an operator creates it ahead of them, or moves an existing one, with these
commands: ``groups create email/client-ops audit --from 2026-11-30T10:00`` makes the audit
concern start with the records put from then on; ``groups move ... --from now`` skips
whatever is waiting. Moving a group changes what it will read next; its pending entries stay.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

import redis
from redis.exceptions import ResponseError

from streamcqrs.streams._replies import group_exists, group_missing
from streamcqrs.streams.cli._common import (
    CommandError,
    connect,
    emit,
    existing,
    moment,
    stream_ref,
)
from streamcqrs.streams.envelope import as_str
from streamcqrs.streams.keys import Kind

_MAX_SEQ = 18446744073709551615


def start_id(text: str) -> str:
    """``now``, ``beginning`` or a time (see ``moment``) as the id a group starts after."""
    if text == "now":
        return "$"
    if text == "beginning":
        return "0"
    at = moment(text)
    return f"{at - 1}-{_MAX_SEQ}" if at > 0 else "0"


def add_parsers(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``groups`` on the CLI's subcommands."""
    groups = commands.add_parser(
        "groups",
        help="list consumer groups, or create or move one to start at a time",
        description="The consumer groups (one per concern) of SUBSYSTEM/KIND: 'list' them "
        "with where each has read to; 'create' one to start at --from (before its bots "
        "first run); 'move' one so that it reads next from --from. --from is 'now', "
        "'beginning', epoch ms, ISO 8601 (UTC unless it says) or an age (10m, 2h).",
    )
    actions = groups.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list", parents=parents, help="list the groups",
        description="List the consumer groups of SUBSYSTEM/KIND.",
    )  # fmt: skip
    listing.add_argument("stream", type=stream_ref, help="SUBSYSTEM/KIND, e.g. email/client-ops")
    listing.set_defaults(func=groups_command)
    for name, what in (
        ("create", "create a group that starts at --from"),
        ("move", "make an existing group read next from --from"),
    ):
        action = actions.add_parser(name, parents=parents, help=what, description=what + ".")
        action.add_argument("stream", type=stream_ref, help="SUBSYSTEM/KIND, e.g. email/client-ops")
        action.add_argument("group", help="the concern (consumer group), e.g. audit")
        action.add_argument(
            "--from", dest="start", type=start_id, required=True, metavar="WHEN",
            help="now, beginning, or a time: epoch ms, ISO 8601, or an age (10m, 2h)",
        )  # fmt: skip
        action.set_defaults(func=groups_command)


def groups_command(args: argparse.Namespace, out: TextIO) -> int:
    """``groups list|create|move``."""
    subsystem, kind = args.stream
    client = connect(args)
    keys = existing(client, subsystem, kind, args.partitions)
    streams = [part.stream(kind) for part in keys.all()]
    if args.action == "list":
        rows = [row for key in streams for row in _groups(client, key)]
        return emit(out, rows, args.json) if rows or args.json else _none(out, subsystem, kind)
    done = []
    for key in streams:
        try:
            if args.action == "create":
                client.xgroup_create(key, args.group, id=args.start, mkstream=True)
            else:
                client.xgroup_setid(key, args.group, id=args.start)
        except ResponseError as exc:
            if group_exists(exc):
                raise CommandError(
                    f"group {args.group!r} already exists on {key}; move it instead: "
                    f"streamcqrs groups move {subsystem}/{kind} {args.group} --from ..."
                ) from None
            if group_missing(exc):
                raise CommandError(
                    f"group {args.group!r} does not exist on {key}; create it: "
                    f"streamcqrs groups create {subsystem}/{kind} {args.group} --from ..."
                ) from None
            raise
        done.append(key)
    verb = "created" if args.action == "create" else "moved"
    out.write(f"{verb} {args.group} on {len(done)} partition(s) of {subsystem}/{kind}, "
              f"reading next after {args.start}\n")  # fmt: skip
    return 0


def _groups(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    try:
        found: list[dict[Any, Any]] = client.xinfo_groups(key)
    except ResponseError:  # no such stream yet
        return []
    return [
        {
            "stream": key,
            "group": as_str(info["name"]),
            "last_delivered": as_str(info["last-delivered-id"]),
            "pending": int(info["pending"]),
            "lag": info.get("lag"),
            "consumers": int(info["consumers"]),
        }
        for info in found
    ]


def _none(out: TextIO, subsystem: str, kind: Kind) -> int:
    out.write(f"no consumer groups on {subsystem}/{kind}\n")
    return 0
