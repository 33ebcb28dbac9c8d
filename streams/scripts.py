"""Lua scripts kept as ``.lua`` files beside this module, run by SHA with a cached load."""

from __future__ import annotations

import contextlib
import hashlib
from functools import cache
from importlib import resources
from typing import Any, cast

import redis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamcqrs.streams.connection import is_cluster

_NETWORK = (RedisConnectionError, RedisTimeoutError, OSError)
NAMES = ("commit", "latest", "by_tag", "lease", "read_in_turn", "clean")
"""Every script of the framework (``load_all`` puts them on a cluster's every node)."""


class Script:
    """One Lua script: its source, its SHA1, and how to run it on a sync or async client.

    EVALSHA first (the server usually has it cached); on NOSCRIPT (a restarted or flushed
    script cache) load it once and retry, so callers never see the difference.
    """

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def run(
        self, client: redis.asyncio.Redis, keys: list[str], args: list[Any]
    ) -> Any:
        """Run on an async client."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load(client)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    def run_sync(self, client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        """Run on a sync client."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.load_sync(client)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    async def load(self, client: redis.asyncio.Redis) -> None:
        """SCRIPT LOAD; on a cluster into every node, replicas too (scripts are not
        replicated: a replica promoted in a failover would answer NOSCRIPT first)."""
        if is_cluster(client):
            cluster = cast(Any, client)
            await cluster.initialize()
            with contextlib.suppress(*_NETWORK):  # a node down: the primaries at least
                # The nodes by name: the ALL_NODES flag yields to SCRIPT's own policy, which
                # is the primaries only.
                await cluster.execute_command("SCRIPT", "LOAD", self.source,
                                              target_nodes=cluster.get_nodes())  # fmt: skip
                return
        await client.script_load(self.source)

    def load_sync(self, client: redis.Redis) -> None:
        """``load`` on a sync client."""
        if is_cluster(client):
            cluster = cast(Any, client)
            with contextlib.suppress(*_NETWORK):
                cluster.execute_command("SCRIPT", "LOAD", self.source,
                                        target_nodes=cluster.get_nodes())  # fmt: skip
                return
        client.script_load(self.source)


@cache
def script(name: str) -> Script:
    """Load ``streams/lua/<name>.lua`` once per process."""
    source = resources.files("streamcqrs.streams").joinpath("lua", f"{name}.lua").read_text()
    return Script(name, source)


async def load_all(client: redis.asyncio.Redis) -> None:
    """Load every script of the framework (into every node of a cluster, replicas too)."""
    for name in NAMES:
        await script(name).load(client)
