"""``python -m streams``: look at streams, replay them, handle failures, make ACL users.

Commands (``python -m streams COMMAND --help`` for each):

* ``tail SUBSYSTEM/KIND`` the newest records, decoded; ``--follow`` until Ctrl-C
* ``show SUBSYSTEM/KIND ID`` one record and its handling by each concern
* ``replay SUBSYSTEM/KIND --since T --to SUBSYSTEM/KIND`` put records again
* ``dead-letters list|retry|archive SUBSYSTEM`` entries a bot could not take
* ``failed list|retry SUBSYSTEM/KIND --concern C`` records whose handling failed
* ``acl MODULE:APP`` least-privilege Redis users for an app

The server is ``--url``, else ``$REDIS_URL``; an ACL user logs in with ``--username`` (or
``$REDIS_USERNAME``) and ``$REDIS_PASSWORD``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

import redis.exceptions

from streamcqrs.domain.errors import StreamCQRSError
from streamcqrs.streams.cli import _acl, _deadletters, _failed, _records
from streamcqrs.streams.cli._common import add_connection_options, fail


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    connection = argparse.ArgumentParser(add_help=False)
    add_connection_options(connection)
    reading = argparse.ArgumentParser(add_help=False)
    group = reading.add_argument_group("output and layout")
    group.add_argument(
        "--json", action="store_true", help="print one JSON object per line instead of text"
    )
    group.add_argument(
        "--partitions", type=int, default=None,
        help="the subsystem's partition count (default: detected from which partition "
        "streams exist; give it when the highest partitions may be empty)",
    )  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="python -m streams",
        description="Operate streamcqrs streams on a Redis or Valkey server: tail and show "
        "records, replay them, retry or archive dead letters and failed records, and print "
        "least-privilege ACL users for an app.",
        epilog="The server is --url, else $REDIS_URL. Run 'python -m streams COMMAND --help' "
        "for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _records.add_parsers(commands, [connection, reading])
    _deadletters.add_parsers(commands, [connection, reading])
    _failed.add_parsers(commands, [connection, reading])
    _acl.add_parsers(commands, [connection])
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command; return its exit status (0 ok, 2 error)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse cannot match a list of ids that comes after an option ("retry S --concern C
    # ID"); take such trailing ids as the list they belong to.
    if extra and isinstance(getattr(args, "ids", None), list):
        if any(each.startswith("-") for each in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.ids += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        status: int = args.func(args, out or sys.stdout)
    except StreamCQRSError as exc:
        return fail(str(exc))
    except redis.exceptions.AuthenticationError as exc:
        return fail(f"cannot log in: {exc}; check --username and $REDIS_PASSWORD")
    except redis.exceptions.NoPermissionError as exc:
        return fail(f"the server refused: {exc}; log in as a user allowed to do this")
    except redis.exceptions.ConnectionError as exc:
        return fail(f"cannot reach the server at {args.url}: {exc}; is it running?")
    except redis.exceptions.ResponseError as exc:
        return fail(f"the server answered: {exc}")
    return status


__all__ = ["build_parser", "main"]
