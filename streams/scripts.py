"""Lua scripts kept as ``.lua`` files beside this module, run by SHA with a cached load."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import NoScriptError


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
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    def run_sync(self, client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        """Run on a sync client."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


@cache
def script(name: str) -> Script:
    """Load ``streams/lua/<name>.lua`` once per process."""
    source = resources.files("streamcqrs.streams").joinpath("lua", f"{name}.lua").read_text()
    return Script(name, source)
