"""``acl``: the least-privilege Redis users of an app, as ``ACL SETUSER`` lines.

``streams`` sits below ``handlers``, so this module never imports it: it loads the app object
named on the command line and asks it for its roles, by duck typing. An object with an
``acl_roles()`` method answers itself; otherwise ``handlers.acl.roles(app)`` is looked up
at run time (it derives the roles from an ``App``'s handler declarations).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, TextIO

from streamcqrs.streams import acl
from streamcqrs.streams.cli._common import CommandError, connect, import_module


def add_parsers(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``acl`` on the CLI's subcommands."""
    parser = commands.add_parser(
        "acl",
        parents=parents,
        help="print (or create) the least-privilege Redis ACL users of an app",
        description="Print one ACL SETUSER line per user an app needs: a write-only client "
        "per handled client-operation stream, a bot allowed exactly what its handlers "
        "declared, an API that reads views and events. Needs Redis 7+ or Valkey (ACL "
        "selectors). Each user gets a fresh random password unless --password is given. The "
        "lines go to stdout (pipe them into redis-cli), what each user is for to stderr.",
    )
    parser.add_argument(
        "app", metavar="MODULE:APP",
        help="the app object, e.g. examples.notification.app:app (the current directory is "
        "on the import path)",
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


def load_object(spec: str) -> Any:
    """The object ``MODULE:ATTR`` names (ATTR may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"{spec!r} is not MODULE:APP, e.g. myapp.bots:app")
    found: Any = import_module(module_name)
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise CommandError(f"module {module_name!r} has no attribute {attr!r}") from None
    return found


def roles_of(app: Any) -> acl.Roles:
    """The app's ACL roles: its own ``acl_roles()``, else ``handlers.acl.roles(app)``."""
    if callable(getattr(app, "acl_roles", None)):
        found = app.acl_roles()
    else:
        derive = importlib.import_module("streamcqrs.handlers.acl").roles
        found = derive(app)
    if not isinstance(found, acl.Roles):
        raise CommandError(f"{app!r} did not give ACL roles (got {type(found).__name__})")
    return found


def acl_command(args: argparse.Namespace, out: TextIO) -> int:
    """``acl``: print each user's ACL SETUSER line; with ``--apply`` create them too."""
    roles = roles_of(load_object(args.app))
    passwords: dict[str, str | None] = {}
    for role in roles.roles:
        if args.no_password:
            passwords[role.name] = None
        else:
            passwords[role.name] = args.password or acl.new_password()
    # Comments go to stderr, so that stdout pipes straight into redis-cli / valkey-cli.
    for text in roles.render(passwords):
        (sys.stderr if text.startswith("#") else out).write(text + "\n")
    if args.apply:
        client = connect(args)
        for role in roles.roles:
            role.apply(client, passwords[role.name])
        sys.stderr.write(f"# created {len(roles.roles)} users on the server\n")
    return 0
