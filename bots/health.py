"""Is an app's bot deployment ready: does the server answer, and does every consumer group exist?

Orchestrators ask in one of two ways: ``streamcqrs health MODULE:APP`` (an exec probe: exit 0
when ready, 1 with the reasons when not) or ``GET /health/ready`` on the port
``streamcqrs run --metrics-port`` serves (200 or 503). ``GET /health/live`` answers 200 while
the supervisor runs.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

import redis
from redis.exceptions import RedisError, ResponseError

from streamcqrs.handlers.delivery import sources
from streamcqrs.handlers.registry import App
from streamcqrs.streams.cli import add_connection_options, connect
from streamcqrs.streams.envelope import as_str
from streamcqrs.streams.server import redact


def problems(client: redis.Redis, app: App, url: str = "") -> list[str]:
    """Why ``app``'s bots are not ready on the server behind ``client``; empty when ready."""
    try:
        client.ping()
    except RedisError as exc:
        return [f"the server at {redact(url) or 'the given URL'} does not answer: {exc}"]
    found: list[str] = []
    groups: dict[str, set[str]] = {}
    for source in sources(app):
        if source.broadcast:  # each bot process makes its own group of a broadcast concern
            continue
        if source.key not in groups:
            try:
                groups[source.key] = {as_str(i["name"]) for i in client.xinfo_groups(source.key)}
            except ResponseError:  # no such stream: its bot has not started yet
                groups[source.key] = set()
        if source.group not in groups[source.key]:
            found.append(f"no consumer group {source.group!r} on {source.key} (bots not started?)")
    return found


def add_parsers(commands: Any) -> None:
    """Register ``health`` on ``streamcqrs``'s subcommands."""
    health = commands.add_parser(
        "health",
        help="exit 0 if an app's bots are ready (server answers, every group exists), else 1",
        description="A readiness probe for orchestrators: exit 0 and print 'ready' when the "
        "server at --url or $REDIS_URL answers and every consumer group of MODULE:APP "
        "exists; else exit 1 and print each reason. 'streamcqrs run --metrics-port' serves "
        "the same at GET /health/ready.",
    )
    health.add_argument("app", metavar="MODULE:APP", help="the App whose bots to check")
    add_connection_options(health, imports=False)
    health.set_defaults(func=health_command)


def health_command(args: argparse.Namespace, out: TextIO) -> int:
    """``health``: 0 and 'ready', or 1 and the reasons."""
    app = App.load(args.app)
    client = connect(args)
    try:
        found = problems(client, app, args.url)
    finally:
        client.close()
    if found:
        out.write("not ready:\n" + "".join(f"  {each}\n" for each in found))
        return 1
    out.write("ready\n")
    return 0


__all__ = ["add_parsers", "health_command", "problems"]
