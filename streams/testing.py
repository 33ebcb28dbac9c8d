"""In-memory mode for users' unit tests: the same streams API over fakeredis.

>>> from streams.testing import MemoryServer
>>> mem = MemoryServer()
>>> notification = mem.subsystem("notification")

Needs the ``memory`` extra (fakeredis with lupa for the Lua scripts). For tests that must
prove behaviour on a real server, use ``streams.server.LocalServer`` instead.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.domain.registry import TypeRegistry, registry
from streamcqrs.streams.subsystem import Subsystem


class MemoryServer:
    """One in-memory server; every client made from it sees the same data."""

    def __init__(self) -> None:
        try:
            import fakeredis
        except ImportError:
            raise ConfigurationError(
                "the in-memory mode needs fakeredis: pip install 'streamcqrs[memory]'"
            ) from None
        self._fakeredis: Any = fakeredis
        self.server = fakeredis.FakeServer()

    def client(self) -> redis.asyncio.Redis:
        """An asyncio client on this in-memory server."""
        client: redis.asyncio.Redis = self._fakeredis.FakeAsyncRedis(server=self.server)
        return client

    def sync_client(self) -> redis.Redis:
        """A sync client on this in-memory server."""
        client: redis.Redis = self._fakeredis.FakeRedis(server=self.server)
        return client

    def subsystem(
        self, name: str, *, partitions: int = 1, types: TypeRegistry = registry
    ) -> Subsystem:
        """A subsystem whose streams live in this in-memory server."""
        return Subsystem(
            name,
            self.client(),
            partitions=partitions,
            types=types,
            sync_client=self.sync_client(),
        )
