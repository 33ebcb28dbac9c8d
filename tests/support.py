"""What tests share: the contract backends (a real server or the in-memory mode) and ``Run``.

The fixtures that hand them out live in ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from functools import cache
from typing import Any, TypeVar

import redis
import redis.asyncio

from streamcqrs.streams import Settings, Subsystem
from streamcqrs.streams.connection import is_cluster
from streamcqrs.streams.testing import MemoryServer

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]


@cache
def is_cluster_url(url: str) -> bool:
    """True if the server at ``url`` is a cluster (asked once per URL)."""
    return Settings(url=url, username=None, password=None).is_cluster()


def sync_client(url: str) -> redis.Redis:
    """A sync client of the server at ``url`` (a cluster client if it is a cluster)."""
    if is_cluster_url(url):
        return Settings(url=url, username=None, password=None, cluster=True).client()
    return redis.Redis.from_url(url)


def async_client(url: str) -> redis.asyncio.Redis:
    """An asyncio client of the server at ``url`` (a cluster client if it is a cluster)."""
    if is_cluster_url(url):
        return Settings(url=url, username=None, password=None, cluster=True).async_client()
    return redis.asyncio.Redis.from_url(url)


def acl_setuser(admin: redis.Redis, *args: str) -> None:
    """ACL SETUSER ``args`` on the server (on every node of a cluster: each keeps its own)."""
    _on_every_node(admin, "ACL", "SETUSER", *args)


def acl_deluser(admin: redis.Redis, name: str) -> None:
    """ACL DELUSER ``name`` (on every node of a cluster)."""
    _on_every_node(admin, "ACL", "DELUSER", name)


def _on_every_node(client: redis.Redis, *args: str) -> None:
    if is_cluster(client):
        cluster: Any = client
        cluster.execute_command(*args, target_nodes=cluster.get_nodes())
    else:
        client.execute_command(*args)  # type: ignore[no-untyped-call]


def flush(url: str) -> None:
    """Empty the server at ``url`` (every primary of a cluster)."""
    with sync_client(url) as admin:
        admin.flushall()


class Backend:
    """Where a contract test's data lives: a real server or the in-memory mode."""

    def __init__(self, name: str, url: str | None, run: Run[Any]) -> None:
        self.name = name
        self.url = url
        self._run = run
        self._memory = MemoryServer() if url is None else None
        self._clients: list[redis.asyncio.Redis] = []
        self._sync_clients: list[redis.Redis] = []
        self.cluster = url is not None and is_cluster_url(url)

    def client(self) -> redis.asyncio.Redis:
        """A new asyncio client on this backend."""
        client = self._memory.client() if self._memory else async_client(self.url or "")
        self._clients.append(client)
        return client

    def sync_client(self) -> redis.Redis:
        """A new sync client on this backend."""
        client = self._memory.sync_client() if self._memory else sync_client(self.url or "")
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


REFUSALS = ("NOPERM", "No permissions", "NoPermissionError", "ACL failure")
"""How a refusal of the ACL user reads in a bot's log: redis-py drops the NOPERM code from
its NoPermissionError ("No permissions to access a key"), a script says "ACL failure"."""


def refused_lines(log: str) -> list[str]:
    """The lines of a bot's log where the server refused its user, or a background task
    (the mover, the timers, the cleaner) failed: none, for a bot allowed all it does."""
    return [
        line
        for line in log.splitlines()
        if any(mark in line for mark in REFUSALS) or "background task failed" in line
    ]
