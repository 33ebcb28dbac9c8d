"""A bot rides out its server going away: it retries with backoff and carries on after."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamcqrs.streams.errors import ServerUnavailable
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.server import LocalServer
from tests.botapps import SUBSYSTEM, BotProcess, Do, ns_of, put_many, wait_until

PART = SubsystemKeys(SUBSYSTEM).partition(0)
EVENTS = PART.stream(Kind.EVENTS)


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[LocalServer]:
    """A private server with an append-only file, so a restart keeps streams and groups."""
    try:
        server = LocalServer(appendonly=True, directory=str(tmp_path / "server")).start()
    except ServerUnavailable as exc:
        pytest.skip(f"no server binary here: {exc}")
    yield server
    server.stop()


def test_a_bot_carries_on_after_its_server_restarts(durable: LocalServer, tmp_path: Path) -> None:
    """The server is killed under a running bot and started again 2 s later: the bot
    reconnects by itself and handles what is put after the restart; each operation's event
    exists once."""
    client = redis.Redis.from_url(durable.url)
    put_many(client, ((Do(n=n), str(n)) for n in range(10)))
    with BotProcess(durable.url, tmp_path / "bot.log") as bot:
        wait_until(lambda: client.xlen(EVENTS) >= 10, "the first operations", 30, bot)
        durable.kill()
        time.sleep(2)  # the outage: the bot's reads and commits fail meanwhile
        durable.start()
        client = redis.Redis.from_url(durable.url)
        put_many(client, ((Do(n=n), str(n)) for n in range(10, 20)))
        wait_until(lambda: client.xlen(EVENTS) >= 20, "the operations after the restart", 40, bot)
        assert bot.alive()
    assert list(range(20)) == sorted(ns_of(client, EVENTS))
    client.close()
