"""Fixtures: a real server for the session, and the contract backends (real and in-memory).

A missing real server skips the real-server tests locally and fails them in CI (CI=true).

``pytest --cluster`` runs every real-server test on a local Valkey Cluster instead (3
primaries, a replica each, on loopback ports; ``streams.cluster.LocalCluster``); tests that
need one server's own behaviour are marked ``single_server`` and skipped there. Tests marked
``cluster`` always run on a cluster: the session's (``cluster_url``) or one of their own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from streamcqrs.streams import LocalServer
from streamcqrs.streams.cluster import LocalCluster
from streamcqrs.streams.errors import ServerUnavailable
from tests.support import Backend, Run, flush


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--cluster``: the real server of every test is a local 3-shard cluster."""
    parser.addoption(
        "--cluster",
        action="store_true",
        help="run the real-server tests on a local Valkey Cluster (3 primaries + replicas)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under --cluster, skip the tests that need a single server's own behaviour."""
    if not config.getoption("--cluster"):
        return
    for item in items:
        marker = item.get_closest_marker("single_server")
        if marker is not None:
            why = marker.args[0] if marker.args else "needs a single server"
            item.add_marker(pytest.mark.skip(reason=f"not on a cluster: {why}"))


def _unavailable(exc: ServerUnavailable) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run against a real server: {exc}")
    pytest.skip(f"no real server here: {exc}")


@pytest.fixture(scope="session")
def session_cluster() -> Iterator[LocalCluster]:
    """A local cluster for the whole session (3 primaries, one replica each)."""
    try:
        cluster = LocalCluster(shards=3, replicas=1).start()
    except ServerUnavailable as exc:
        _unavailable(exc)
        raise
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(session_cluster: LocalCluster) -> str:
    """The session cluster's URL, emptied for this test."""
    flush(session_cluster.url)
    return session_cluster.url


@pytest.fixture(scope="session")
def real_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a real Redis-protocol server: the session cluster under --cluster, else
    REDIS_URL, else a private one started here."""
    if request.config.getoption("--cluster"):
        yield request.getfixturevalue("session_cluster").url
        return
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    try:
        server = LocalServer().start()
    except ServerUnavailable as exc:
        _unavailable(exc)
        raise
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
        flush(url)
        made = Backend("real", url, run)
    else:
        made = Backend("memory", None, run)
    yield made
    made.close()


@pytest.fixture
def real(real_url: str, run: Run[Any]) -> Iterator[Backend]:
    """A real server only, flushed, for tests that involve processes or server behaviour."""
    flush(real_url)
    made = Backend("real", real_url, run)
    yield made
    made.close()
