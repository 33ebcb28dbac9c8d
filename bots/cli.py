"""``streamcqrs run``, ``status``, ``health`` and ``dashboard``: run an app's handlers, report on
its groups, answer a readiness probe, or serve the operators' web dashboard.

streamcqrs run myapp.bots:app --processes 4 --concurrency 64 --metrics-port 9100
streamcqrs status myapp.bots:app
streamcqrs health myapp.bots:app
streamcqrs dashboard myapp.bots:app --port 8080

Every option of ``run`` can come from the environment instead, ``STREAMCQRS_<OPTION>``
(``bots.settings``); a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any, TextIO

from streamcqrs.bots import health
from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.edge import cli as edge_cli
from streamcqrs.bots.logging import LEVELS, configure
from streamcqrs.bots.settings import PREFIX, BotSettings, load
from streamcqrs.streams.cli import add_connection_options

DEFAULTS = BotConfig()
SETTINGS = BotSettings.model_fields


def at_least_one(text: str) -> int:
    """A whole number >= 1, for argparse ``type=`` (``--processes 0`` is refused at once)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def above_zero(text: str) -> float:
    """Seconds > 0, for argparse ``type=``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def add_parsers(commands: Any) -> None:
    """Register ``run`` and ``status`` on ``streamcqrs``'s subcommands."""
    run = commands.add_parser(
        "run",
        help="run an app's handlers in worker processes until SIGTERM/SIGINT",
        description="Run the handlers of MODULE:APP in --processes worker processes under a "
        "supervisor that restarts a crashed worker. SIGTERM/SIGINT stops reading, lets "
        "in-flight handlers finish within --grace seconds, commits, and exits 0. A mistake "
        "no restart can fix (a bad URL or database, an unknown app or --only) exits 2 with "
        "one line saying what to change.",
    )
    run.add_argument(
        "app", metavar="MODULE:APP", help="the App to run: shop:app, shop.py:app, pkg.bots:app"
    )
    run.add_argument(
        "--url",
        help="server URL: redis://, rediss://, valkey://, valkeys:// or unix:// (default: "
        "$REDIS_URL, else a private server that only these workers can reach; "
        "'streamcqrs server' starts one every process can reach)",
    )
    run.add_argument(
        "--processes",
        type=at_least_one,
        default=None,
        metavar="N",
        help="worker processes (%(env)s)",
    )
    run.add_argument(
        "--concurrency",
        type=at_least_one,
        default=None,
        metavar="N",
        help="handlers in flight per process (%(env)s)",
    )
    run.add_argument(
        "--batch",
        type=at_least_one,
        default=None,
        metavar="N",
        help="most entries per XREADGROUP (%(env)s)",
    )
    run.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="SUBSYSTEM",
        help="run only handlers whose input stream belongs to these subsystems (%(env)s)",
    )
    run.add_argument(
        "--visibility-timeout",
        type=above_zero,
        default=None,
        metavar="SECONDS",
        help="idle time after which another bot takes over a pending entry (%(env)s)",
    )
    run.add_argument(
        "--max-attempts",
        type=at_least_one,
        default=None,
        metavar="N",
        help="attempts before a failing record is Failed and dead-lettered (%(env)s)",
    )
    run.add_argument(
        "--retry-base",
        type=float,
        default=None,
        metavar="SECONDS",
        help="delay before the 2nd attempt, doubled per attempt (%(env)s)",
    )
    run.add_argument(
        "--retry-cap",
        type=float,
        default=None,
        metavar="SECONDS",
        help="longest delay between attempts (%(env)s)",
    )
    run.add_argument(
        "--grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time in-flight handlers get to finish on stop (%(env)s)",
    )
    run.add_argument(
        "--block-ms",
        type=at_least_one,
        default=None,
        metavar="MS",
        help="longest wait of one XREADGROUP (%(env)s)",
    )
    run.add_argument(
        "--mover-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="longest pause of the delayed-entry mover (%(env)s)",
    )
    run.add_argument(
        "--dead-consumer-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="remove consumers idle this long with nothing pending (%(env)s)",
    )
    run.add_argument(
        "--cluster",
        action="store_true",
        default=None,
        help="the server is a Redis/Valkey Cluster: outputs for other slots go through each "
        "partition's outbox and the bots' relays (%(env)s: ask the server)",
    )
    run.add_argument(
        "--cleaner-user",
        default=None,
        metavar="USER",
        help="ACL user the cleaner logs in as, e.g. the APP-cleaner of 'streamcqrs acl' (its "
        "password from $STREAMCQRS_CLEANER_PASSWORD; %(env)s: the bots' own user)",
    )
    run.add_argument(
        "--log-level",
        choices=LEVELS,
        default=None,
        help="least severe log level printed (%(env)s)",
    )
    run.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default=None,
        help="log lines as JSON or for people; auto: JSON unless a terminal (%(env)s)",
    )

    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus /metrics and /health/live, /health/ready on this port, from "
        "the supervisor, over every worker (%(env)s; 0: a free port, logged)",
    )
    run.add_argument(
        "--metrics-host",
        default=None,
        metavar="ADDRESS",
        help="address the metrics port listens on (%(env)s)",
    )
    _env_help(run)

    status = commands.add_parser(
        "status",
        help="show each stream and consumer group of an app: length, lag, pending, dead letters",
        description="Per stream and consumer group of MODULE:APP: stream length, lag (entries "
        "not yet delivered), pending entries, age of the oldest pending one, entries waiting "
        "in the delayed set, open dead letters. Reads the server at --url or $REDIS_URL "
        "(never a private one: it would be empty).",
    )
    status.add_argument(
        "app", metavar="MODULE:APP", help="the App to inspect: shop:app, shop.py:app"
    )
    add_connection_options(status, imports=False)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    clean = commands.add_parser(
        "clean",
        help="run one cleaner cycle of an app's retention policies now",
        description="Apply the retention policies of MODULE:APP once (app.retention: done "
        "records' statuses, trimming by age or length, aggregates behind snapshots), as the "
        "bots' cleaner does every app.cleaner(every=...) seconds. Takes the app's cleaner "
        "lease first, so it never runs beside a bot's cleaner: it waits --wait seconds for "
        "the lease, then gives up with exit status 2.",
    )
    clean.add_argument("app", metavar="MODULE:APP", help="the App whose policies to apply")
    add_connection_options(clean, imports=False)
    clean.add_argument(
        "--wait", type=float, default=None, metavar="SECONDS",
        help="how long to wait for the cleaner lease (default: twice its ttl)",
    )  # fmt: skip
    run.set_defaults(func=run_command)
    status.set_defaults(func=status_command)
    clean.set_defaults(func=clean_command)
    health.add_parsers(commands)
    from streamcqrs.bots.dashboard.cli import add_parsers as add_dashboard

    add_dashboard(commands)
    edge_cli.add_parsers(commands)  # gateway, token: the integration edge


def _env_help(parser: argparse.ArgumentParser) -> None:
    """Fill each option's ``%(env)s`` with its variable and default: ``$STREAMCQRS_X, else 64``."""
    for action in parser._actions:
        name = action.dest
        if action.help and "%(env)s" in action.help and name in SETTINGS:
            default = SETTINGS[name].default
            shown = " ".join(default) if isinstance(default, tuple) else default
            shown = "none" if shown in (None, "", ()) else shown
            text = f"${PREFIX}{name.upper()}, else {shown}".replace("%", "%%")
            action.help = action.help.replace("%(env)s", f"default: {text}")


def _json_flag(choice: str) -> bool | None:
    return {"json": True, "console": False}.get(choice)


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    """``run``: the supervisor and its workers, until SIGTERM/SIGINT; its exit status."""
    from streamcqrs.bots.supervisor import Supervisor

    given = {name: getattr(args, name, None) for name in SETTINGS}
    if args.only is not None:
        given["only"] = tuple(args.only)
    settings = load(given)
    config = replace(settings.config(), url=args.url)
    json = _json_flag(settings.log_format)
    configure(settings.log_level, json=json)
    supervisor = Supervisor(
        args.app, config, processes=settings.processes, log_level=settings.log_level,
        json=json, metrics_port=settings.metrics_port, metrics_host=settings.metrics_host,
    )  # fmt: skip
    return supervisor.run()


def status_command(args: argparse.Namespace, out: TextIO) -> int:
    """``status``: the figures of every consumer group of the app."""
    from streamcqrs.bots.status import report

    return report(args, out)


def clean_command(args: argparse.Namespace, out: TextIO) -> int:
    """``clean``: one cleaner cycle, as the app's cleaner leader; prints what it removed."""
    import asyncio
    import os

    from redis.exceptions import ResponseError

    from streamcqrs.bots.cleaner import Cleaner
    from streamcqrs.bots.logging import get_logger
    from streamcqrs.handlers.acl import cleaner_user
    from streamcqrs.handlers.registry import App
    from streamcqrs.streams._replies import permission_refused
    from streamcqrs.streams.cli import CommandError, connect_async
    from streamcqrs.streams.errors import PermissionDenied
    from streamcqrs.streams.keys import SubsystemKeys

    configure("warning")  # the report below says what the cycle did
    app = App.load(args.app)
    if not app.deferred.retention:
        out.write(f"app {app.name!r} declares no retention policy (app.retention): nothing to "
                  "clean\n")  # fmt: skip
        return 0
    wait = args.wait if args.wait is not None else 2 * app.deferred.cleaner.lease_ttl

    async def one_cycle() -> Any:
        client = connect_async(args)
        try:
            keys_of = {n: SubsystemKeys(n, app.partitions_of(n)) for n in app.subsystems()}
            cleaner = Cleaner(client, app, keys_of, consumer=f"clean-{os.getpid()}",
                              log=get_logger(app=app.name, role="clean"))  # fmt: skip
            return await cleaner.once(wait)
        finally:
            await client.aclose()

    try:
        report = asyncio.run(one_cycle())
    except (ResponseError, PermissionDenied) as exc:
        if not permission_refused(str(exc)):
            raise
        user = cleaner_user(app)
        raise CommandError(
            f"the server refused the cleaner ({exc}); log in as {user} (--username {user}, "
            f"its password in $REDIS_PASSWORD): 'streamcqrs acl {args.app}' prints that user"
        ) from None
    if report is None:
        raise CommandError(
            f"another process leads the cleaner of {app.name!r} (it kept the lease for "
            f"{wait:g} s); the bots are cleaning: try again later, or pass a longer --wait"
        )
    out.write(
        f"cleaned {app.name}: {report.forgotten} statuses of done records, {report.trimmed} "
        f"entries, {report.unindexed} index entries, {report.compacted} aggregate events "
        f"in {report.seconds:g} s\n"
    )
    return 0


__all__ = ["add_parsers", "at_least_one", "clean_command", "run_command", "status_command"]
