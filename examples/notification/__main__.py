"""``python -m examples.notification``: the demo, the API, a client, and rebuilding views.

python -m examples.notification demo              # everything on this machine, then exit
python -m examples.notification api --port 8000   # serve the API (REDIS_URL's server)
python -m examples.notification send alice "Subject" "Body" [--idempotency-key K]
python -m examples.notification rebuild-views     # every view again, from events alone
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from streamcqrs.domain.errors import StreamCQRSError
from streamcqrs.streams import Settings, Subsystem


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.notification",
        description="The notification system example of streamcqrs.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="start a server, SMTP and Slack stand-ins, the bots and the API; send a few "
        "notifications; print what happened; stop everything",
    )
    demo.add_argument("--url", help="use this server instead of starting a private one")
    demo.add_argument(
        "--timeout",
        type=float,
        default=45.0,
        help="longest wait for the notifications to end (default: %(default)s s)",
    )
    api = commands.add_parser("api", help="serve the HTTP API with uvicorn")
    api.add_argument("--url", help="server URL (default: REDIS_URL)")
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    api.add_argument("--port", type=int, default=8000, help="port to listen on (%(default)s)")
    send = commands.add_parser("send", help="ask for one notification; print its tracking id")
    send.add_argument("recipient", help="entity id in the directory (alice, bob, ...)")
    send.add_argument("subject")
    send.add_argument("body")
    send.add_argument("--idempotency-key", default="")
    send.add_argument("--url", help="server URL (default: REDIS_URL)")
    rebuild = commands.add_parser(
        "rebuild-views", help="rebuild every notification's view from its events"
    )
    rebuild.add_argument("--url", help="server URL (default: REDIS_URL)")
    return parser  # fmt: skip


def _server_url(given: str | None) -> str | None:
    url = given or os.environ.get("REDIS_URL")
    if not url:
        print("error: give --url or set REDIS_URL to the server holding the notifications",
              file=sys.stderr)  # fmt: skip
    return url


async def _send(url: str, recipient: str, subject: str, body: str, key: str) -> str:
    from examples.notification.client import send_notification

    client = Settings(url=url).async_client()
    try:
        return await send_notification(
            Subsystem("notification", client), recipient, subject, body, idempotency_key=key
        )
    finally:
        await client.aclose()


async def _rebuild(url: str) -> int:
    from examples.notification.app import app
    from examples.notification.views import rebuild_views

    client = Settings(url=url).async_client()
    try:
        return await rebuild_views(client, partitions=app.partitions_of("notification"))
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from examples.notification.demo import run_demo

            return run_demo(timeout=args.timeout, url=args.url)
        url = _server_url(args.url)
        if url is None:
            return 2
        if args.command == "api":
            import uvicorn

            from examples.notification.api import create_api

            uvicorn.run(create_api(url), host=args.host, port=args.port)
            return 0
        if args.command == "send":
            key = args.idempotency_key
            print(asyncio.run(_send(url, args.recipient, args.subject, args.body, key)))
            return 0
        print(f"rebuilt {asyncio.run(_rebuild(url))} views")
        return 0
    except StreamCQRSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
