"""``streamcqrs dashboard MODULE:APP``: serve the operators' web dashboard with uvicorn."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers.registry import App
from streamcqrs.streams.cli import add_connection_options
from streamcqrs.streams.connection import Settings
from streamcqrs.streams.server import require_url


def add_parsers(commands: Any) -> None:
    """Register ``dashboard`` on ``streamcqrs``'s subcommands."""
    dashboard = commands.add_parser(
        "dashboard",
        help="serve a web dashboard of an app's streams, groups, records and dead letters",
        description="Serve server-rendered pages for operators: each subsystem's streams "
        "and consumer groups (length, lag, pending), a record's handling history per "
        "concern, dead letters and failed records with Retry and Archive buttons, a view's "
        "latest JSON, the app's AsyncAPI document. It has no login: it listens on loopback "
        "unless --host says otherwise; put an authenticating proxy in front before you do.",
    )
    dashboard.add_argument("app", metavar="MODULE:APP", help="the App whose streams to show")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on "
                           "(default: %(default)s)")  # fmt: skip
    dashboard.add_argument("--port", type=int, default=8080, help="port to listen on "
                           "(default: %(default)s)")  # fmt: skip
    add_connection_options(dashboard, imports=False)
    dashboard.set_defaults(func=dashboard_command)


def dashboard_command(args: argparse.Namespace, out: TextIO) -> int:
    """``dashboard``: serve until Ctrl-C or SIGTERM."""
    try:
        import uvicorn

        from streamcqrs.bots.dashboard.web import create_dashboard
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs {exc.name}: pip install 'streamcqrs[dashboard]'"
        ) from None
    app = App.load(args.app)
    url = require_url(args.url)
    Settings(url=url, username=args.username).check()
    server = uvicorn.Server(
        uvicorn.Config(
            create_dashboard(app, url), host=args.host, port=args.port, log_level="warning"
        )
    )
    out.write(f"dashboard of {app.name} on http://{args.host}:{args.port}/ (Ctrl-C stops it)\n")
    out.flush()
    server.run()
    return 0


__all__ = ["add_parsers", "dashboard_command"]
