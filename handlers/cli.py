"""``acl``: the least-privilege Redis users of an app, as ``ACL SETUSER`` lines.

It lives with the handlers because it reads their declarations (``handlers.acl.roles``);
the ``streamcqrs`` command puts it beside the operator and bot commands.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from streamcqrs.handlers.acl import roles
from streamcqrs.handlers.registry import App
from streamcqrs.streams import acl
from streamcqrs.streams.cli import add_connection_options, connect


def add_parsers(commands: Any) -> None:
    """Register ``acl`` on ``streamcqrs``'s subcommands."""
    connection = argparse.ArgumentParser(add_help=False)
    add_connection_options(connection, imports=False)
    parser = commands.add_parser(
        "acl",
        parents=[connection],
        help="print (or create) the least-privilege Redis ACL users of an app",
        description="Print one ACL SETUSER line per user an app needs: a write-only client "
        "per handled client-operation stream, a bot allowed exactly what its handlers "
        "declared, an API that reads views and events. Needs Redis 7+ or Valkey (ACL "
        "selectors). Each user gets a fresh random password unless --password is given. The "
        "lines go to stdout (pipe them into redis-cli or valkey-cli), what each user is for "
        "to stderr.",
    )
    parser.add_argument(
        "app", metavar="MODULE:APP",
        help="the app, e.g. shop:app, shop.py:app or examples.notification.app:app (the "
        "current directory is on the import path)",
    )  # fmt: skip
    parser.add_argument(
        "--password",
        help="one password for every user (for development; default: a random one each)",
    )
    parser.add_argument(
        "--no-password", action="store_true",
        help="print users without a password (they cannot log in until you set one)",
    )  # fmt: skip
    parser.add_argument(
        "--apply", action="store_true",
        help="also create the users on the server at --url (needs an admin login)",
    )  # fmt: skip
    parser.set_defaults(func=acl_command)


def acl_command(args: argparse.Namespace, out: TextIO) -> int:
    """``acl``: print each user's ACL SETUSER line; with ``--apply`` create them too."""
    found = roles(App.load(args.app))
    passwords: dict[str, str | None] = {}
    for role in found.roles:
        if args.no_password:
            passwords[role.name] = None
        else:
            passwords[role.name] = args.password or acl.new_password()
    # Comments go to stderr, so that stdout pipes straight into redis-cli / valkey-cli.
    for text in found.render(passwords):
        (sys.stderr if text.startswith("#") else out).write(text + "\n")
    if args.apply:
        client = connect(args)
        for role in found.roles:
            role.apply(client, passwords[role.name])
        sys.stderr.write(f"# created {len(found.roles)} users on the server\n")
    return 0


__all__ = ["acl_command", "add_parsers"]
