"""Clients on a real cluster: told apart from a single server by asking it, ACL users on every
node, what refuses a cluster clearly, and ``streamcqrs server --shards``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers import App
from streamcqrs.handlers import acl as app_acl
from streamcqrs.handlers.testing import HandlerTest
from streamcqrs.streams import LocalServer, Settings
from streamcqrs.streams.cluster import LocalCluster, free_ports
from streamcqrs.streams.connection import is_cluster
from tests.messages import Ping
from tests.support import Run
from tests.test_cli_server import started, stop, wait_for

pytestmark = pytest.mark.cluster


def test_a_cluster_is_told_apart_from_a_single_server_by_asking_it(
    cluster_url: str, run: Run[Any]
) -> None:
    """Settings hands out RedisCluster clients (sync and asyncio) for a cluster's URL and
    plain ones for a single server's on a TCP port, with no flag."""
    with LocalServer(port=free_ports(1)[0]) as server:
        single = Settings(url=server.url)
        singles = (is_cluster(single.client()), is_cluster(single.async_client()))
        asked = single.is_cluster()
    cluster = Settings(url=cluster_url)
    sync_cluster, async_cluster = cluster.client(), cluster.async_client()

    assert (True, True) == (is_cluster(sync_cluster), is_cluster(async_cluster))
    assert (False, False) == singles
    assert (True, False) == (cluster.is_cluster(), asked)
    sync_cluster.close()
    run(async_cluster.aclose())


def test_generated_acl_users_are_created_on_every_node(
    cluster_url: str, session_cluster: LocalCluster
) -> None:
    """Role.apply on a cluster client creates the user on each primary and replica (each
    node keeps its own users; a promoted replica must know them)."""
    app = App("aclcluster")

    @app.handler(Ping, stream="aclcluster/client-ops")
    async def noop(_: Ping, __: Any) -> None: ...

    role = app_acl.bot(app)
    admin = Settings(url=cluster_url).client()
    role.apply(admin, "pw")
    try:
        found = []
        for node in session_cluster.nodes:
            with node.client() as client:
                found.append(client.acl_getuser(role.name) is not None)
        assert [True] * len(session_cluster.nodes) == found
    finally:
        admin.execute_command("ACL", "DELUSER", role.name, target_nodes=admin.get_nodes())  # type: ignore[attr-defined]
        admin.close()


def test_handler_test_refuses_a_cluster_client_saying_what_to_use(cluster_url: str) -> None:
    """HandlerTest runs on one server or in memory: a cluster client is refused at once."""
    app = App("refused")
    with pytest.raises(ConfigurationError, match="single server"):
        HandlerTest(app, Settings(url=cluster_url).async_client())


def test_the_server_command_starts_a_local_cluster_and_stops_it(tmp_path: Path) -> None:
    """server --shards 2 --replicas 0 prints a REDIS_URL that names a cluster of 2 primaries;
    SIGTERM stops every node, exit 0."""
    log = tmp_path / "server.log"
    with started("server", "--shards", "2", "--replicas", "0", log=log) as proc:
        text = wait_for(log, r"Ctrl-C stops it", proc)
        (url,) = re.findall(r"export REDIS_URL=(\S+)", text)
        client = Settings(url=url).client()
        primaries = len(client.get_primaries())  # type: ignore[attr-defined]
        client.close()
        ports = [int(p) for p in re.findall(r"\d+", text.split("ports ")[1].split(")")[0])]
        assert 0 == stop(proc)
    assert 2 == primaries
    for port in ports:
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=port, socket_connect_timeout=1).ping()
