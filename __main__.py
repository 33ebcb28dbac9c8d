"""``streamcqrs`` (or ``python -m streamcqrs``): the one command in front of every CLI.

This module is the top floor: it builds one parser from each layer's commands (``run`` and
``status`` from the bots, ``acl`` from the handlers, ``server`` and the operator commands
from the streams) and runs the one asked for. A mistake on the command line or in what it
names prints one line, ``error: ...``, and exits 2; never a traceback.

streamcqrs server                              # a development server; prints REDIS_URL
streamcqrs run shop:app --processes 2          # the bots
streamcqrs status shop:app                     # how far each consumer group is
streamcqrs tail shop/events --follow           # and the other operator commands
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn, TextIO

from streamcqrs import __version__
from streamcqrs.bots import cli as bots_cli
from streamcqrs.handlers import cli as handlers_cli
from streamcqrs.streams import cli as streams_cli


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as one line: ``error: ...`` and exit 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: MESSAGE (see 'PROG --help')`` on stderr and exit 2."""
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``streamcqrs`` and every subcommand."""
    parser = Parser(
        prog="streamcqrs",
        description="Run and operate streamcqrs subsystems on a Redis or Valkey server: "
        "'server' for development, 'run' the bots of an app, watch them ('status', "
        "'health', 'dashboard'), look at streams ('tail', 'show'), put records again "
        "('replay'), deal with what failed ('dead-letters', 'failed'), manage consumer groups "
        "('groups') and retention ('clean'), serve the app over HTTP ('gateway', 'token'), "
        "least-privilege users ('acl') and the app's AsyncAPI document ('asyncapi').",
        epilog="The server is --url, else $REDIS_URL. Run 'streamcqrs COMMAND --help' for a "
        "command's options.",
    )
    parser.add_argument("--version", action="version", version=f"streamcqrs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bots_cli.add_parsers(commands)
    streams_cli.add_parsers(commands)
    handlers_cli.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command; return its exit status (0 ok, 2 a mistake it names)."""
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
    return streams_cli.run_command(args, out or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
