"""Durable puts: the put returns only once a replica has it (WAIT), for what must survive a
failover.

Replication is asynchronous: a primary answers a write before its replicas have it, and a
primary that dies in that moment takes the write with it when its replica is promoted. A
durable put sends the commit and ``WAIT replicas timeout`` in one write on one connection to
the primary that owns the record's slot (WAIT counts the replicas that have every write that
connection made), and raises ``NotDurable`` if fewer confirm within the timeout. The record is
written either way; ``NotDurable`` says it may not survive a failover yet.

WAIT narrows the window; it does not close it: a replica that confirmed can still lose a race
for promotion to one that did not (with two or more replicas), and nothing is fsynced by it.
With one replica per primary, a confirmed put is on the only node that can be promoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, cast

import redis
import redis.asyncio
from redis.exceptions import (
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamcqrs.streams._wire import send_all
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.connection import is_cluster
from streamcqrs.streams.errors import NotDurable
from streamcqrs.streams.scripts import script

DEFAULT_TIMEOUT_MS = 2000
"""How long a durable put waits for its replicas by default."""
RETRY_FOR_S = 30.0
"""How long a durable put keeps sending again after a lost server (a failover takes a few
seconds past the cluster's ``cluster-node-timeout``), half a second apart at most."""
NETWORK = (RedisConnectionError, RedisTimeoutError, OSError)


def _calls(commit: Commit, replicas: int, timeout_ms: int) -> list[tuple[Any, ...]]:
    keys = commit.keys
    return [
        ("EVALSHA", script("commit").sha, len(keys), *keys, *commit.args()),
        ("WAIT", replicas, timeout_ms),
    ]


def _outcome(commit: Commit, replies: list[Any], replicas: int, timeout_ms: int) -> list[Any]:
    reply, acked = replies
    if isinstance(reply, ResponseError):
        raise commit.error(str(reply))
    if isinstance(reply, Exception):
        raise reply
    result = commit.result(reply[0])
    if isinstance(result, Exception):
        raise result
    if isinstance(acked, Exception):
        raise acked
    if int(acked) < replicas:
        raise NotDurable(
            f"written, but {int(acked)} of {replicas} replicas confirmed within {timeout_ms} ms: "
            "it may be lost if the primary fails now; check the replicas (INFO replication), "
            "or raise the timeout",
            result,
        )
    return result


async def run_durable(
    client: redis.asyncio.Redis,
    commit: Commit,
    *,
    replicas: int = 1,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> list[Any]:
    """Apply ``commit`` and wait until ``replicas`` replicas have it; its replies.

    NotDurable (with the replies as ``result``) if fewer confirm within ``timeout_ms``.
    """
    calls = _calls(commit, replicas, timeout_ms)
    give_up = time.monotonic() + RETRY_FOR_S
    attempt = 0
    while True:
        replies = await send_all(client, calls)
        first = replies[0]
        if isinstance(first, NoScriptError):
            await script("commit").load(client)
        elif isinstance(first, (ClusterDownError, *NETWORK)) and time.monotonic() < give_up:
            await asyncio.sleep(_pause(attempt))  # send_all has the cluster looked up again
        else:
            return _outcome(commit, replies, replicas, timeout_ms)
        attempt += 1


def run_durable_sync(
    client: redis.Redis,
    commit: Commit,
    *,
    replicas: int = 1,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> list[Any]:
    """``run_durable`` on a sync client."""
    calls = _calls(commit, replicas, timeout_ms)
    give_up = time.monotonic() + RETRY_FOR_S
    attempt = 0
    while True:
        try:
            replies = _send_sync(client, calls)
        except NETWORK:
            if time.monotonic() >= give_up:
                raise
            replies = []
        first = replies[0] if replies else None
        if isinstance(first, NoScriptError):
            script("commit").load_sync(client)
        elif first is None or isinstance(first, (MovedError, ClusterDownError, *NETWORK)):
            if time.monotonic() >= give_up:
                return _outcome(commit, replies, replicas, timeout_ms)
            _look_up_again(client)
            time.sleep(_pause(attempt))
        else:
            return _outcome(commit, replies, replicas, timeout_ms)
        attempt += 1


def _pause(attempt: int) -> float:
    return min(0.5, 0.05 * float(2 ** min(attempt, 4)))


def _look_up_again(client: redis.Redis) -> None:
    """On a cluster: ask it again who serves which slots (a failover, a moved slot)."""
    if is_cluster(client):
        with contextlib.suppress(*NETWORK, RedisClusterException):
            cast(Any, client).nodes_manager.initialize()


def _send_sync(client: redis.Redis, calls: list[tuple[Any, ...]]) -> list[Any]:
    """Both calls on one connection: the key's primary's on a cluster (the put is replay
    safe: sent again after a lost reply, it finds its own entry and writes nothing)."""
    conn = client
    if is_cluster(client):
        cluster = cast(Any, client)
        node = cluster.get_node_from_key(calls[0][3])
        conn = cluster.get_redis_connection(node)
    pipe = conn.pipeline(transaction=False)
    for call in calls:
        pipe.execute_command(*call)  # type: ignore[no-untyped-call]
    return list(pipe.execute(raise_on_error=False))


__all__ = ["DEFAULT_TIMEOUT_MS", "run_durable", "run_durable_sync"]
