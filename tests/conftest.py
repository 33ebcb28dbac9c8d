"""Fixtures: a real server for the session, and the contract backends (real and in-memory).

A missing real server skips the real-server tests locally and fails them in CI (CI=true).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from streamcqrs.streams import LocalServer
from streamcqrs.streams.errors import ServerUnavailable
from tests.support import Backend, Run


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
