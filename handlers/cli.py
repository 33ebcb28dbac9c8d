"""The commands that read an app's handler declarations: ``acl`` (its least-privilege Redis
users, as ``ACL SETUSER`` lines) and ``asyncapi`` (its AsyncAPI 3.0.0 document).

They live with the handlers because they read the declarations; the ``streamcqrs`` command
puts them beside the operator and bot commands.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, TextIO

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers.acl import API_KINDS, roles
from streamcqrs.handlers.asyncapi import asyncapi_document
from streamcqrs.handlers.registry import App
from streamcqrs.streams import acl
from streamcqrs.streams.cli import add_connection_options, connect
from streamcqrs.streams.keys import Kind


def add_parsers(commands: Any) -> None:
    """Register ``acl`` on ``streamcqrs``'s subcommands."""
    connection = argparse.ArgumentParser(add_help=False)
    add_connection_options(connection, imports=False)
    parser = commands.add_parser(
        "acl",
        parents=[connection],
        help="print (or create) the least-privilege Redis ACL users of an app",
        description="Print one ACL SETUSER line per user an app needs: a write-only client "
        "per handled client-operation stream, a ticket submitter per subsystem whose "
        "tickets it executes, a bot allowed exactly what its handlers and deferred work "
        "declared, a cleaner apart from it when the app declares retention, an API that "
        "reads views and events. Needs Redis 7+ or Valkey (ACL "
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
        "--api-snapshots", action="store_true",
        help="let the API user read snapshots too (typed aggregate state: Subsystem.snapshot)",
    )  # fmt: skip
    parser.add_argument(
        "--apply", action="store_true",
        help="also create the users on the server at --url (needs an admin login)",
    )  # fmt: skip
    parser.set_defaults(func=acl_command)
    _add_asyncapi(commands)


def acl_command(args: argparse.Namespace, out: TextIO) -> int:
    """``acl``: print each user's ACL SETUSER line; with ``--apply`` create them too."""
    kinds = (*API_KINDS, Kind.SNAPSHOTS) if args.api_snapshots else API_KINDS
    found = roles(App.load(args.app), kinds)
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




def _add_asyncapi(commands: Any) -> None:
    """Register ``asyncapi``: an app's AsyncAPI 3.0.0 document."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "asyncapi",
        help="print an app's AsyncAPI 3.0.0 document (channels, messages, operations)",
        description="Write the AsyncAPI 3.0.0 document of MODULE:APP, made from its handler "
        "declarations (no server is contacted): its streams as channels, its message models' "
        "JSON schemas, its handlers as operations.",
    )
    parser.add_argument(
        "app", metavar="MODULE:APP",
        help="the handlers.App, e.g. examples.notification.app:app (the current directory "
        "is on the import path)",
    )  # fmt: skip
    parser.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--title", help="the document's title (default: the app's name)")
    parser.add_argument(
        "--api-version", default="0.1.0", help="the API version it states (default: %(default)s)"
    )
    parser.add_argument("--server", metavar="URL", help="add this server (credentials dropped)")
    parser.add_argument("--yaml", action="store_true", help="YAML instead of JSON (needs PyYAML)")
    parser.set_defaults(func=asyncapi_command)


def asyncapi_command(args: argparse.Namespace, out: TextIO) -> int:
    """``asyncapi``: write the document the command line asks for."""
    document = asyncapi_document(
        App.load(args.app), title=args.title, version=args.api_version, server_url=args.server
    )
    if args.yaml:
        try:
            yaml: Any = importlib.import_module("yaml")
        except ImportError:
            raise ConfigurationError(
                "--yaml needs PyYAML: pip install pyyaml, or drop --yaml"
            ) from None
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
    else:
        out.write(text)
    return 0


__all__ = ["acl_command", "add_parsers", "asyncapi_command"]
