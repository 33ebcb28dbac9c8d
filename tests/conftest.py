"""Fixtures: a real server for the session, and the contract backends (real and in-memory).

A missing real server skips the real-server tests locally and fails them in CI (CI=true).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio

from domain.errors import ServerUnavailable
from streams import LocalServer, Subsystem
from streams.testing import MemoryServer

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]


@pytest.fixture(scope="session")
def real_url() -> Iterator[str]:
    """URL of a real Redis-protocol server: REDIS_URL, else a private one started here."""
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    try:
        server = LocalServer().start()
    except ServerUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run against a real server: {exc}")
        pytest.skip(f"no real server here: {exc}")
    yield server.url
    server.stop()


@pytest.fixture
def run() -> Iterator[Run[Any]]:
    """Run a coroutine to completion on one event loop kept for the whole test."""
    with asyncio.Runner() as runner:
        yield runner.run


class Backend:
    """Where a contract test's data lives: a real server or the in-memory mode."""

    def __init__(self, name: str, url: str | None, run: Run[Any]) -> None:
        self.name = name
        self.url = url
        self._run = run
        self._memory = MemoryServer() if url is None else None
        self._clients: list[redis.asyncio.Redis] = []
        self._sync_clients: list[redis.Redis] = []

    def client(self) -> redis.asyncio.Redis:
        """A new asyncio client on this backend."""
        client = (
            self._memory.client() if self._memory else redis.asyncio.Redis.from_url(self.url or "")
        )
        self._clients.append(client)
        return client

    def sync_client(self) -> redis.Redis:
        """A new sync client on this backend."""
        if self._memory:
            client = self._memory.sync_client()
        else:
            client = redis.Redis.from_url(self.url or "")
        self._sync_clients.append(client)
        return client

    def subsystem(self, name: str, *, partitions: int = 1) -> Subsystem:
        """A subsystem on this backend, with both an async and a sync client."""
        return Subsystem(
            name, self.client(), partitions=partitions, sync_client=self.sync_client()
        )

    def close(self) -> None:
        for client in self._clients:
            self._run(client.aclose())
        for sync in self._sync_clients:
            sync.close()


@pytest.fixture(params=["real", "memory"])
def backend(request: pytest.FixtureRequest, run: Run[Any]) -> Iterator[Backend]:
    """Each contract test runs once on a real server and once on the in-memory mode."""
    if request.param == "real":
        url = request.getfixturevalue("real_url")
        with redis.Redis.from_url(url) as admin:
            admin.flushall()
        made = Backend("real", url, run)
    else:
        made = Backend("memory", None, run)
    yield made
    made.close()


@pytest.fixture
def real(real_url: str, run: Run[Any]) -> Iterator[Backend]:
    """A real server only, flushed, for tests that involve processes or server behaviour."""
    with redis.Redis.from_url(real_url) as admin:
        admin.flushall()
    made = Backend("real", real_url, run)
    yield made
    made.close()
