"""``python -m bots``: run an app's handlers, or report on its consumer groups.

python -m bots run myapp.bots:app --processes 4 --concurrency 64
python -m bots status myapp.bots:app
"""

from __future__ import annotations

import argparse
import sys

from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.logging import LEVELS, configure

DEFAULTS = BotConfig()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bots",
        description="Run streamcqrs bots (handlers over Redis consumer groups) and inspect them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run an app's handlers in worker processes until SIGTERM/SIGINT",
        description="Run the handlers of MODULE:APP in --processes worker processes under a "
        "supervisor that restarts a crashed worker. SIGTERM/SIGINT stops reading, lets "
        "in-flight handlers finish within --grace seconds, commits, and exits 0.",
    )
    run.add_argument("app", metavar="MODULE:APP", help="the handlers.App to run (shop.bots:app)")
    run.add_argument("--url", help="server URL (default: REDIS_URL, else a private server)")
    run.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="worker processes (default: %(default)s)",
    )
    run.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULTS.concurrency,
        metavar="N",
        help="handlers in flight per process (default: %(default)s)",
    )
    run.add_argument(
        "--batch",
        type=int,
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
        type=float,
        default=DEFAULTS.visibility_timeout,
        metavar="SECONDS",
        help="idle time after which another bot takes over a pending entry (default: %(default)s)",
    )
    run.add_argument(
        "--max-attempts",
        type=int,
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
        type=int,
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
        "not yet delivered), pending entries, age of the oldest pending one, dead letters.",
    )
    status.add_argument("app", metavar="MODULE:APP", help="the handlers.App to inspect")
    status.add_argument("--url", help="server URL (default: REDIS_URL, else a private server)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser  # fmt: skip


def _json_flag(choice: str) -> bool | None:
    return {"json": True, "console": False}.get(choice)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "run":
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
    from streamcqrs.bots.status import main as status_main

    return status_main(args.app, args.url, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
