"""Smoke test of an installed wheel, run from a folder outside the checkout that has its own
``domain/`` and ``handlers/`` packages (``app/`` here, copied there by ``.ci/run``).

With the fresh venv's python: every subcommand's ``--help`` exits 0; ``streamcqrs server``
starts on a free loopback port; ``streamcqrs run shop:app`` runs the bots there; a producer
puts a PlaceOrder and the OrderPlaced event appears; ``status`` and ``tail`` see it; both
processes stop on SIGTERM with exit 0. Every wait is bounded; every process started is
stopped by its pid.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import streamcqrs
from streamcqrs import Settings, Subsystem

HERE = Path.cwd()
BIN = Path(sys.executable).parent
COMMAND = str(BIN / "streamcqrs")
SUBCOMMANDS = ("run", "status", "clean", "health", "dashboard", "gateway", "token", "server",
               "tail", "show", "replay", "dead-letters", "failed", "groups", "acl", "asyncapi")
"""Every subcommand; ``helps`` checks that ``streamcqrs --help`` lists no other."""
TIMEOUT = 60.0


def check(condition: bool, what: str) -> None:
    """Stop the smoke test with ``what`` if ``condition`` does not hold."""
    if not condition:
        raise SystemExit(f"smoke test failed: {what}")


def free_port() -> int:
    """A loopback TCP port nothing listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def env() -> dict[str, str]:
    """The environment without REDIS_* or PYTHONPATH (nothing may point at the checkout)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")
            and k != "PYTHONPATH"}  # fmt: skip


def helps() -> None:
    """``streamcqrs --help``, ``python -m streamcqrs --help`` and each subcommand's."""
    for args in ([COMMAND], [sys.executable, "-m", "streamcqrs"],
                 *([COMMAND, sub] for sub in SUBCOMMANDS)):  # fmt: skip
        done = subprocess.run([*args, "--help"], capture_output=True, text=True,
                              timeout=TIMEOUT, env=env(), check=False)  # fmt: skip
        check(done.returncode == 0 and "usage:" in done.stdout, f"{args} --help: {done}")
        if args == [COMMAND]:
            named = set(re.findall(r"^ {4}([a-z][a-z-]+)(?: |$)", done.stdout, re.MULTILINE))
            check(named == set(SUBCOMMANDS), f"streamcqrs --help lists {sorted(named)}, "
                  f"the smoke test checks {sorted(SUBCOMMANDS)}")  # fmt: skip
    print(f"--help of streamcqrs and its {len(SUBCOMMANDS)} subcommands: exit 0")


def wait_line(log: Path, text: str, proc: subprocess.Popen[bytes]) -> str:
    """Wait until ``log`` holds ``text``; its content (fail if ``proc`` ends first)."""
    deadline = time.monotonic() + TIMEOUT
    while text not in (found := log.read_text(errors="replace")):
        check(proc.poll() is None, f"{proc.args} exited {proc.returncode}: {found}")
        check(time.monotonic() < deadline, f"no {text!r} in {TIMEOUT}s: {found}")
        time.sleep(0.05)
    return found


def start(args: list[str], log: Path, extra: dict[str, str]) -> subprocess.Popen[bytes]:
    """A background process of the command, output into ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen([COMMAND, *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env() | extra)  # fmt: skip


async def put_and_wait(url: str) -> None:
    """Put one PlaceOrder; wait (bounded) until its OrderPlaced event is in shop/events."""
    from shop import OrderPlaced, PlaceOrder

    client = Settings(url=url).async_client()
    try:
        shop = Subsystem("shop", client)
        await shop.writer("client-ops").put(PlaceOrder(sku="A-1"), object_id="7")
        deadline = time.monotonic() + TIMEOUT
        while not [r for r in await shop.reader("events").read()
                   if r.message == OrderPlaced(sku="A-1")]:  # fmt: skip
            check(time.monotonic() < deadline, f"no OrderPlaced in {TIMEOUT}s")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


def stop(proc: subprocess.Popen[bytes], what: str) -> None:
    """SIGTERM, and check the exit status is 0 (kill it if it does not stop)."""
    proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(TIMEOUT)
        raise SystemExit(f"smoke test failed: {what} did not stop on SIGTERM") from None
    check(status == 0, f"{what} exited {status} on SIGTERM")


def main() -> None:
    """Run the smoke test; exit non-zero with the reason on the first failure."""
    installed = Path(streamcqrs.__file__).resolve()
    check("site-packages" in installed.parts, f"streamcqrs imported from {installed}")
    import domain
    import handlers

    check(Path(domain.__file__).resolve().parent == HERE / "domain", "the user's domain")
    check(Path(handlers.__file__).resolve().parent == HERE / "handlers", "the user's handlers")
    print(f"streamcqrs {streamcqrs.__version__} from {installed.parent}; the user's own "
          "domain/ and handlers/ import beside it")  # fmt: skip
    helps()
    server_log, bots_log = HERE / "server.log", HERE / "bots.log"
    server = start(["server", "--port", str(free_port())], server_log, {})
    bots: subprocess.Popen[bytes] | None = None
    try:
        text = wait_line(server_log, "Ctrl-C stops it", server)
        url = next(line for line in text.splitlines() if line.startswith("export REDIS_URL="))
        url = url.partition("=")[2]
        print(f"streamcqrs server: {url}")
        bots = start(["run", "shop:app", "--log-format", "json"], bots_log, {"REDIS_URL": url})
        wait_line(bots_log, '"started"', bots)
        asyncio.run(put_and_wait(url))
        print("streamcqrs run shop:app: PlaceOrder put, OrderPlaced appended")
        for args, expect in ((["status", "shop:app"], "{shop.0}:client-ops"),
                             (["tail", "shop/events"], "shop.OrderPlaced")):  # fmt: skip
            done = subprocess.run([COMMAND, *args], capture_output=True, text=True, timeout=TIMEOUT,
                                  env=env() | {"REDIS_URL": url}, check=False)  # fmt: skip
            check(done.returncode == 0 and expect in done.stdout, f"{args}: {done}")
        print("streamcqrs status and tail see it")
        stop(bots, "streamcqrs run")
        bots = None
        stop(server, "streamcqrs server")
    finally:
        for proc in (bots, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()
