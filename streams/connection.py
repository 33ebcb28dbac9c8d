"""Connection settings and clients: one place that knows how to reach the server.

``Settings.check`` connects once before anything is started on a server (a bot supervisor
forking workers): what no retry can fix (a database the server does not have, a login it
refuses) becomes a ConfigurationError that names the fix; ``config_problem`` reads those
refusals out of redis-py's errors for every other caller.

A Redis (or Valkey) Cluster is recognised by asking the server (``INFO cluster``) when a
client is made, so one URL naming any node of it is all a producer or a bot needs: the
client is then redis-py's ``RedisCluster`` (sync or asyncio), which routes each command to
the node that owns its keys' slot, follows MOVED redirects and finds a promoted replica after
a failover. It offers the same command methods as ``Redis``, so the clients are typed as
``Redis`` throughout; the few places that work below redis-py's command layer ask
``is_cluster`` (``streams._wire`` routes there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.streams._replies import cluster_disabled, login_refused, no_such_database
from streamcqrs.streams.errors import ServerUnavailable
from streamcqrs.streams.server import NO_SERVER_HINT, redact, resolve_url

CHECK_TIMEOUT = 3.0
"""Seconds ``Settings.check`` waits for the server to answer."""
PROBE_TIMEOUT = 2.0
"""Seconds a client's maker waits for the server to say whether it is a cluster."""


def is_cluster(client: object) -> bool:
    """True for a cluster client (sync or asyncio ``RedisCluster``)."""
    return isinstance(client, redis.RedisCluster | redis.asyncio.RedisCluster)


def ensure_connections(client: redis.asyncio.Redis, needed: int) -> None:
    """Let ``client`` hold at least ``needed`` connections (per node, on a cluster).

    A pool smaller than the work in flight fails with "Too many connections" under load
    instead of waiting its turn.
    """
    if is_cluster(client):
        cluster = cast(Any, client)
        if cluster.connection_kwargs.get("max_connections", needed) < needed:
            cluster.connection_kwargs["max_connections"] = needed
        for node in cluster.nodes_manager.nodes_cache.values():
            node.max_connections = max(node.max_connections, needed)
        return
    pool = client.connection_pool
    if getattr(pool, "max_connections", needed) < needed:
        pool.max_connections = needed


def config_problem(error: BaseException, url: str) -> ConfigurationError | None:
    """The configuration mistake behind a redis-py error met on connecting, if it is one.

    A database number the server does not have and a refused login fail every retry the
    same way: callers stop on them instead of retrying. None for anything else (a server
    that is down may come back).
    """
    where = redact(url)
    if login_refused(error):
        return ConfigurationError(
            f"the server at {where} refused the login: {error}; check --username / "
            "REDIS_USERNAME and REDIS_PASSWORD"
        )
    if no_such_database(error):
        return ConfigurationError(
            f"the server at {where} has no such database ({error}); use a database number "
            "it has (0-15 unless its 'databases' setting says more), e.g. .../0"
        )
    return None


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the server is and who we are on it (Redis ACL user) when credentials are set.

    Without ``url``, ``REDIS_URL`` is used, else a private server is started (see
    ``streams.server``); ``valkey://`` URLs are taken like ``redis://``. ``username``/
    ``password`` default to ``REDIS_USERNAME`` and ``REDIS_PASSWORD``.
    """

    url: str | None = None
    username: str | None = field(default_factory=lambda: os.environ.get("REDIS_USERNAME"))
    password: str | None = field(default_factory=lambda: os.environ.get("REDIS_PASSWORD"))
    socket_timeout: float | None = None
    retries: int = 8
    """Reconnect attempts per command after a dropped connection (jittered backoff, <= 2 s
    apart), so producers and bots ride out a server restart (or a cluster's failover) by
    themselves."""
    cluster: bool | None = None
    """Whether the server is a Redis Cluster; None: ask it when a client is made (a server
    that does not answer then is taken as a single server)."""

    def _backoff(self) -> ExponentialWithJitterBackoff:
        return ExponentialWithJitterBackoff(cap=2.0, base=0.05)

    def _clustered(self, url: str) -> bool:
        if self.cluster is not None:
            return self.cluster
        try:
            return self.is_cluster(PROBE_TIMEOUT)
        except (ServerUnavailable, ConfigurationError, ResponseError):
            return False  # the client's first command meets the same trouble and says so

    def is_cluster(self, timeout: float = CHECK_TIMEOUT) -> bool:
        """Ask the server whether it runs in cluster mode (``CLUSTER INFO`` answers).

        A unix socket is never a cluster (cluster clients speak TCP). ServerUnavailable if
        nothing answers, ConfigurationError for a refused login or a user that may not ask
        (grant ``+cluster|info``; the users ``streamcqrs acl`` makes have it).
        """
        url = resolve_url(self.url)
        if url.startswith("unix:"):
            return False
        probe = self._plain_probe(url, timeout)
        try:
            probe.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise ServerUnavailable(
                f"cannot reach the server at {redact(url)}: {exc}; is it running? {NO_SERVER_HINT}"
            ) from None
        except ResponseError as exc:
            if cluster_disabled(exc):
                return False
            problem = config_problem(exc, url) or ConfigurationError(
                f"cannot tell whether the server at {redact(url)} is a cluster: {exc}; grant "
                "the user +cluster|info, or say Settings(cluster=True/False)"
            )
            raise problem from None
        finally:
            probe.close()
        return True

    def _plain_probe(self, url: str, timeout: float) -> redis.Redis:
        return redis.Redis.from_url(
            url,
            username=self.username,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=redis.retry.Retry(self._backoff(), 0),
        )

    def client(self) -> redis.Redis:
        """A sync client (producers, CLIs, tests); a ``RedisCluster`` on a cluster."""
        url = resolve_url(self.url)
        if self._clustered(url):
            cluster = redis.RedisCluster.from_url(
                url,
                username=self.username,
                password=self.password,
                socket_timeout=self.socket_timeout,
                retry=redis.retry.Retry(self._backoff(), self.retries),
            )
            return cast(redis.Redis, cluster)
        return redis.Redis.from_url(
            url,
            username=self.username,
            password=self.password,
            socket_timeout=self.socket_timeout,
            retry=redis.retry.Retry(self._backoff(), self.retries),
        )

    def async_client(self) -> redis.asyncio.Redis:
        """An asyncio client (bots, APIs); a ``redis.asyncio.RedisCluster`` on a cluster."""
        url = resolve_url(self.url)
        if self._clustered(url):
            cluster = redis.asyncio.RedisCluster.from_url(
                url,
                username=self.username,
                password=self.password,
                socket_timeout=self.socket_timeout,
                retry=redis.asyncio.retry.Retry(self._backoff(), self.retries),
                # A MOVED reply patches the slot map for that slot. The default, a full
                # re-discovery every 5th MOVED, first closes every connection of the client:
                # commands in flight on them fail and are re-sent, and a non-idempotent one
                # (INCR) then runs twice. Commands sent before the client knew the slots (by
                # concurrent first users) come back MOVED in numbers, so it happens.
                reinitialize_steps=0,
            )
            return cast(redis.asyncio.Redis, cluster)
        return redis.asyncio.Redis.from_url(
            url,
            username=self.username,
            password=self.password,
            socket_timeout=self.socket_timeout,
            retry=redis.asyncio.retry.Retry(self._backoff(), self.retries),
        )

    def check(self, timeout: float = CHECK_TIMEOUT) -> None:
        """Connect once, log in, select the database and PING.

        ConfigurationError for what no retry fixes (a database the server does not have, a
        refused login); ServerUnavailable if nothing answers at the URL.
        """
        url = resolve_url(self.url)
        client = self._plain_probe(url, timeout)
        try:
            client.ping()
        except (ResponseError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
            problem = config_problem(exc, url)
            if problem is not None:
                raise problem from None
            if isinstance(exc, ResponseError):
                raise
            raise ServerUnavailable(
                f"cannot reach the server at {redact(url)}: {exc}; is it running? "
                f"{NO_SERVER_HINT}"
            ) from None
        finally:
            client.close()


__all__ = [
    "CHECK_TIMEOUT",
    "PROBE_TIMEOUT",
    "Settings",
    "config_problem",
    "ensure_connections",
    "is_cluster",
]
