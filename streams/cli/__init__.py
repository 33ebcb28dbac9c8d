"""The operator commands of ``streamcqrs``: look at streams, replay them, handle failures,
and run a development server.

Commands (``streamcqrs COMMAND --help`` for each):

* ``tail SUBSYSTEM/KIND`` the newest records, decoded; ``--follow`` until Ctrl-C
* ``show SUBSYSTEM/KIND ID`` one record and its handling by each concern
* ``replay SUBSYSTEM/KIND --since T --to SUBSYSTEM/KIND`` put records again
* ``dead-letters list|retry|archive SUBSYSTEM`` entries a bot could not take
* ``failed list|retry|archive SUBSYSTEM/KIND --concern C`` records whose handling failed
* ``groups list|create|move SUBSYSTEM/KIND [GROUP] --from WHEN`` where consumer groups start
* ``server`` a Valkey server in the foreground for development, printing its REDIS_URL

The server is ``--url``, else ``$REDIS_URL`` (never a private server: it would be empty); an
ACL user logs in with ``--username`` (or ``$REDIS_USERNAME``) and ``$REDIS_PASSWORD``. The
``streamcqrs`` command (the package's ``__main__``) puts these beside the bots' ``run`` and
``status`` and the handlers' ``acl``; what they share to connect and to report an error in
one line is public here for those layers.
"""

from __future__ import annotations

import argparse
from typing import Any

from streamcqrs.streams.cli import _deadletters, _failed, _groups, _records, _server
from streamcqrs.streams.cli._common import (
    CommandError,
    add_connection_options,
    connect,
    connect_async,
    fail,
    run_command,
)
from streamcqrs.streams.cli._deadletters import open_count


def add_parsers(commands: Any) -> None:
    """Register the operator commands and ``server`` on ``streamcqrs``'s subcommands."""
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
    _server.add_parsers(commands)
    _records.add_parsers(commands, [connection, reading])
    _deadletters.add_parsers(commands, [connection, reading])
    _failed.add_parsers(commands, [connection, reading])
    _groups.add_parsers(commands, [connection, reading])


__all__ = [
    "CommandError",
    "add_connection_options",
    "add_parsers",
    "connect",
    "connect_async",
    "fail",
    "open_count",
    "run_command",
]
