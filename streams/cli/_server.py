"""``server``: a Valkey server in the foreground for development, one every process can reach.

A bot started without a URL runs on a private server nobody else can reach; this one listens
on a loopback port (or a unix socket you name) and prints the ``REDIS_URL`` to export in the
other terminals, so ``run``, ``status``, the operator commands and your producers share it.
Ctrl-C or SIGTERM stops it and exits 0; a temp data dir is removed, a given one is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from streamcqrs.streams.cli._common import CommandError
from streamcqrs.streams.cluster import LocalCluster
from streamcqrs.streams.server import LOOPBACK, LocalServer, answers

DEFAULT_PORT = 6379
"""The port ``server`` listens on unless told otherwise (Redis's own)."""


def add_parsers(commands: Any) -> None:
    """Register ``server`` on the CLI's subcommands."""
    server = commands.add_parser(
        "server",
        help="run a Valkey server in the foreground for development; prints its REDIS_URL",
        description="Start the embedded Valkey (or redis-server/valkey-server on PATH) in "
        f"the foreground, listening on {LOOPBACK} only, and print the 'export REDIS_URL=...' "
        "line for the other terminals: 'streamcqrs run', 'status', the operator commands "
        "and your producers then share it. Ctrl-C or SIGTERM stops it (exit 0). For "
        "development: it has no password; production runs a managed Redis or Valkey.",
    )
    where = server.add_mutually_exclusive_group()
    where.add_argument(
        "--port", type=_port, default=None, metavar="N",
        help=f"TCP port on {LOOPBACK} (default: {DEFAULT_PORT})",
    )  # fmt: skip
    where.add_argument(
        "--socket", metavar="PATH", help="listen on this unix socket instead of a TCP port"
    )
    server.add_argument(
        "--data-dir", metavar="DIR",
        help="keep the server's files here (its log, and with --appendonly its data, so a "
        "restart on the same DIR keeps it); default: a temp dir removed on exit",
    )  # fmt: skip
    server.add_argument(
        "--appendonly", action="store_true",
        help="write every change to an append-only file, on disk before each reply",
    )  # fmt: skip
    server.add_argument(
        "--shards", type=_shards, default=0, metavar="N",
        help="a local cluster instead: N primaries (and --replicas each) on free loopback "
        "ports; prints the REDIS_URL of one node (clients find the others)",
    )  # fmt: skip
    server.add_argument(
        "--replicas", type=int, default=1, choices=(0, 1, 2), metavar="R",
        help="with --shards: replicas per primary (default: %(default)s)",
    )  # fmt: skip
    server.set_defaults(func=server_command)


def _shards(text: str) -> int:
    """A shard count from 1 to 16, for argparse ``type=``."""
    if not text.isdigit() or not 1 <= int(text) <= 16:
        raise argparse.ArgumentTypeError(f"--shards must be a number from 1 to 16, not {text!r}")
    return int(text)


def _port(text: str) -> int:
    """A TCP port number, for argparse ``type=``."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"port must be a number from 1 to 65535, not {text!r}")
    return int(text)


def server_command(args: argparse.Namespace, out: TextIO) -> int:
    """``server``: start it, print where it is, and wait for Ctrl-C/SIGTERM or its end."""
    if args.shards:
        return _cluster(args, out)
    port = None if args.socket else (args.port or DEFAULT_PORT)
    if port is not None and answers((LOOPBACK, port)):
        raise CommandError(
            f"a server already answers at redis://{LOOPBACK}:{port}/0; use it (export "
            f"REDIS_URL=redis://{LOOPBACK}:{port}/0) or pass --port N for another one"
        )
    socket_path = str(Path(args.socket).resolve()) if args.socket else None
    if args.data_dir:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    server = LocalServer(
        port=port, socket_path=socket_path, directory=args.data_dir, appendonly=args.appendonly
    )
    with _signal_pipe() as wake_read, _stopping(server):
        server.start()
        assert server.process is not None
        kept = "kept" if args.data_dir else "removed on exit"
        out.write(f"export REDIS_URL={server.url}\n")
        out.flush()
        sys.stderr.write(
            f"# {Path(server.binary).name} (pid {server.process.pid}) on {server.url}, "
            f"{'append-only file on' if args.appendonly else 'in memory'}; files in "
            f"{server.directory} ({kept}); Ctrl-C stops it\n"
        )
        exited = os.pidfd_open(server.process.pid)
        try:
            ready, _, _ = select.select([wake_read, exited], [], [])
        finally:
            os.close(exited)
        if wake_read not in ready:
            tail = server.log_path.read_text(errors="replace")[-800:]
            raise CommandError(
                f"the server exited by itself (code {server.process.wait()}); its log ends: "
                f"{tail.strip()!r}"
            )
        sys.stderr.write("# stopping the server\n")
        return 0


@contextlib.contextmanager
def _signal_pipe() -> Iterator[int]:
    """A pipe SIGINT and SIGTERM write to while the block runs: select() on the fd it
    yields wakes on either (no polling, nothing done inside a handler)."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    # A Python-level handler makes the interpreter write the signal's number to the fd.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    old_wakeup = signal.set_wakeup_fd(wake_write)
    try:
        yield wake_read
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_read)
        os.close(wake_write)


@contextlib.contextmanager
def _stopping(server: LocalServer | LocalCluster) -> Iterator[None]:
    """Stop ``server`` when the block ends, however it ends."""
    try:
        yield
    finally:
        server.stop()


def _cluster(args: argparse.Namespace, out: TextIO) -> int:
    """``server --shards N``: a local cluster in the foreground until Ctrl-C/SIGTERM."""
    if args.port or args.socket or args.data_dir or args.appendonly:
        raise CommandError(
            "--shards picks free loopback ports and temp dirs itself: drop --port, --socket, "
            "--data-dir and --appendonly"
        )
    cluster = LocalCluster(shards=args.shards, replicas=args.replicas)
    with _signal_pipe() as wake_read, _stopping(cluster):
        cluster.start()
        out.write(f"export REDIS_URL={cluster.url}\n")
        out.flush()
        ports = ", ".join(str(node.port) for node in cluster.nodes)
        sys.stderr.write(
            f"# a cluster of {args.shards} primaries with {args.replicas} replica(s) each "
            f"(ports {ports}), in memory; Ctrl-C stops it\n"
        )
        select.select([wake_read], [], [])
        sys.stderr.write("# stopping the cluster\n")
        return 0
