"""``streamcqrs run`` and ``streamcqrs status``: run an app's handlers, or report on its groups.

streamcqrs run myapp.bots:app --processes 4 --concurrency 64
streamcqrs status myapp.bots:app
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.logging import LEVELS, configure
from streamcqrs.streams.cli import add_connection_options

DEFAULTS = BotConfig()


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
        default=1,
        metavar="N",
        help="worker processes (default: %(default)s)",
    )
    run.add_argument(
        "--concurrency",
        type=at_least_one,
        default=DEFAULTS.concurrency,
        metavar="N",
        help="handlers in flight per process (default: %(default)s)",
    )
    run.add_argument(
        "--batch",
        type=at_least_one,
        default=DEFAULTS.batch,
        metavar="N",
        help="most entries per XREADGROUP (default: %(default)s)",
    )
    run.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="SUBSYSTEM",
        help="run only handlers whose input stream belongs to these subsystems",
    )
    run.add_argument(
        "--visibility-timeout",
        type=above_zero,
        default=DEFAULTS.visibility_timeout,
        metavar="SECONDS",
        help="idle time after which another bot takes over a pending entry (default: %(default)s)",
    )
    run.add_argument(
        "--max-attempts",
        type=at_least_one,
        default=DEFAULTS.max_attempts,
        metavar="N",
        help="attempts before a failing record is Failed and dead-lettered (default: %(default)s)",
    )
    run.add_argument(
        "--retry-base",
        type=float,
        default=DEFAULTS.retry_base,
        metavar="SECONDS",
        help="delay before the 2nd attempt, doubled per attempt (default: %(default)s)",
    )
    run.add_argument(
        "--retry-cap",
        type=float,
        default=DEFAULTS.retry_cap,
        metavar="SECONDS",
        help="longest delay between attempts (default: %(default)s)",
    )
    run.add_argument(
        "--grace",
        type=float,
        default=DEFAULTS.grace,
        metavar="SECONDS",
        help="time in-flight handlers get to finish on stop (default: %(default)s)",
    )
    run.add_argument(
        "--block-ms",
        type=at_least_one,
        default=DEFAULTS.block_ms,
        metavar="MS",
        help="longest wait of one XREADGROUP (default: %(default)s)",
    )
    run.add_argument(
        "--mover-interval",
        type=float,
        default=DEFAULTS.mover_interval,
        metavar="SECONDS",
        help="longest pause of the delayed-entry mover (default: %(default)s)",
    )
    run.add_argument(
        "--dead-consumer-after",
        type=float,
        default=DEFAULTS.dead_consumer_after,
        metavar="SECONDS",
        help="remove consumers idle this long with nothing pending (default: %(default)s)",
    )
    run.add_argument(
        "--cluster",
        action="store_true",
        help="Redis Cluster: route outputs for other slots through the outbox",
    )
    run.add_argument(
        "--log-level",
        choices=LEVELS,
        default="info",
        help="least severe log level printed (default: %(default)s)",
    )
    run.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="log lines as JSON or for people (default: JSON unless a terminal)",
    )

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
    run.set_defaults(func=run_command)
    status.set_defaults(func=status_command)  # fmt: skip


def _json_flag(choice: str) -> bool | None:
    return {"json": True, "console": False}.get(choice)


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    """``run``: the supervisor and its workers, until SIGTERM/SIGINT; its exit status."""
    from streamcqrs.bots.supervisor import Supervisor

    config = BotConfig(
        url=args.url,
        concurrency=args.concurrency,
        batch=args.batch,
        block_ms=args.block_ms,
        only=tuple(args.only),
        visibility_timeout=args.visibility_timeout,
        max_attempts=args.max_attempts,
        retry_base=args.retry_base,
        retry_cap=args.retry_cap,
        grace=args.grace,
        mover_interval=args.mover_interval,
        dead_consumer_after=args.dead_consumer_after,
        cluster=args.cluster,
    )
    json = _json_flag(args.log_format)
    configure(args.log_level, json=json)
    supervisor = Supervisor(
        args.app, config, processes=args.processes, log_level=args.log_level, json=json
    )
    return supervisor.run()


def status_command(args: argparse.Namespace, out: TextIO) -> int:
    """``status``: the figures of every consumer group of the app."""
    from streamcqrs.bots.status import report

    return report(args, out)


__all__ = ["add_parsers", "at_least_one", "run_command", "status_command"]
