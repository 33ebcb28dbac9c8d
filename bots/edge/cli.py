"""``streamcqrs gateway`` and ``streamcqrs token``: serve an app over HTTP, and its tokens.

streamcqrs gateway shop:app --port 8080
streamcqrs gateway shop:app --acl --relay mymodule:relay   # their Redis users
streamcqrs token create ui --scope execute:shop --scope views:shop
streamcqrs token revoke ui

The relay is an app like any other: ``relay = relay_app(["shop/events"])`` in a module of
yours, then ``streamcqrs run mymodule:relay``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any, TextIO

from streamcqrs.streams.cli import add_connection_options
from streamcqrs.streams.cli._common import connect_async
from streamcqrs.streams.server import require_url


def add_parsers(commands: Any) -> None:
    """Register ``gateway`` and ``token`` on ``streamcqrs``'s subcommands."""
    gateway = commands.add_parser(
        "gateway",
        help="serve an app over HTTP: operations, status, views, subscriptions, live push",
        description="Serve MODULE:APP's HTTP gateway (needs the 'edge' extra) with uvicorn: "
        "POST operations its handlers take, GET their status and views, subscribe to "
        "channels with webhooks, and follow events and views over Server-Sent Events. "
        "Every request needs a bearer token ('streamcqrs token create').",
    )
    gateway.add_argument("app", metavar="MODULE:APP", help="the App to serve: shop:app")
    gateway.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    gateway.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    gateway.add_argument(
        "--acl", action="store_true",
        help="print the gateway's least-privilege Redis user (ACL SETUSER) and exit",
    )  # fmt: skip
    gateway.add_argument(
        "--relay", metavar="MODULE:APP",
        help="with --acl, also print the user of this relay app (relay_app(...))",
    )  # fmt: skip
    gateway.add_argument(
        "--password", help="with --acl: the users' password (default: a random one each)"
    )
    add_connection_options(gateway, imports=False)
    gateway.set_defaults(func=gateway_command)

    token = commands.add_parser(
        "token",
        help="make, list or revoke the gateway's bearer tokens",
        description="Bearer tokens of the HTTP gateway, kept on the server as their SHA-256 "
        "with a name and scopes (ACTION:SUBSYSTEM; ACTION one of execute, views, events, "
        "subscribe, full-data, realtime; SUBSYSTEM may be *). 'create' prints the token once.",
    )
    actions = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create", help="make a token and print it (only now)",
        description="Make a token named NAME with the scopes given, and print it: it is "
        "shown only this once (the server keeps its SHA-256).",
    )  # fmt: skip
    create.add_argument("name", help="what the token is for: ui, billing-service")
    create.add_argument("--scope", action="append", default=[], required=True,
                        metavar="ACTION:SUBSYSTEM", help="a scope (repeatable)")  # fmt: skip
    revoke = actions.add_parser(
        "revoke", help="revoke a token by name",
        description="Revoke the token named NAME: requests with it get 401 from now on.",
    )  # fmt: skip
    revoke.add_argument("name", help="the token's name")
    listing = actions.add_parser(
        "list", help="list tokens' names and scopes",
        description="Each token's name and scopes (never the token itself).",
    )  # fmt: skip
    listing.add_argument("--json", action="store_true", help="print JSON")
    for each in (create, revoke, listing):
        add_connection_options(each, imports=False)
        each.set_defaults(func=token_command)


def gateway_command(args: argparse.Namespace, out: TextIO) -> int:
    """``gateway``: serve the app's gateway until Ctrl-C."""
    import uvicorn

    from streamcqrs.bots.edge.gateway import create_gateway
    from streamcqrs.handlers import App

    app = App.load(args.app)
    if args.acl:
        from streamcqrs.bots.edge import acl as edge_acl
        from streamcqrs.streams.acl import Roles, new_password

        made = [edge_acl.gateway(app)]
        if args.relay:
            made.append(edge_acl.relay(App.load(args.relay)))
        roles = Roles(tuple(made))
        for line in roles.render({r.name: args.password or new_password() for r in made}):
            out.write(line + "\n")
        return 0
    url = require_url(args.url)
    out.write(f"gateway of {app.name} on http://{args.host}:{args.port}\n")
    uvicorn.run(create_gateway(app, url=url), host=args.host, port=args.port, log_level="info")
    return 0


def token_command(args: argparse.Namespace, out: TextIO) -> int:
    """``token create|revoke|list``."""
    from streamcqrs.bots.edge.tokens import Tokens

    async def act() -> int:
        client = connect_async(args)
        try:
            tokens = Tokens(client)
            if args.action == "create":
                out.write(await tokens.create(args.name, args.scope) + "\n")
            elif args.action == "revoke":
                if not await tokens.revoke(args.name):
                    out.write(f"no token named {args.name!r}\n")
                    return 1
                out.write(f"revoked {args.name}\n")
            else:
                found = await tokens.list()
                if args.json:
                    out.write(json.dumps([{"name": t.name, "scopes": list(t.scopes)}
                                          for t in found]) + "\n")  # fmt: skip
                for t in found if not args.json else []:
                    out.write(f"{t.name}  {' '.join(t.scopes)}\n")
            return 0
        finally:
            await client.aclose()

    return asyncio.run(act())


__all__ = ["add_parsers", "gateway_command", "token_command"]
