"""Connection settings and clients: one place that knows how to reach the server."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff

from streamcqrs.streams.server import resolve_url


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the server is and who we are on it (Redis ACL user) when credentials are set.

    Without ``url``, ``REDIS_URL`` is used, else a private server is started (see
    ``streams.server``). ``username``/``password`` default to ``REDIS_USERNAME`` and
    ``REDIS_PASSWORD``.
    """

    url: str | None = None
    username: str | None = field(default_factory=lambda: os.environ.get("REDIS_USERNAME"))
    password: str | None = field(default_factory=lambda: os.environ.get("REDIS_PASSWORD"))
    socket_timeout: float | None = None
    retries: int = 8
    """Reconnect attempts per command after a dropped connection (jittered backoff, <= 2 s
    apart), so producers and bots ride out a server restart by themselves."""

    def _backoff(self) -> ExponentialWithJitterBackoff:
        return ExponentialWithJitterBackoff(cap=2.0, base=0.05)

    def client(self) -> redis.Redis:
        """A sync client (producers, CLIs, tests)."""
        return redis.Redis.from_url(
            resolve_url(self.url),
            username=self.username,
            password=self.password,
            socket_timeout=self.socket_timeout,
            retry=redis.retry.Retry(self._backoff(), self.retries),
        )

    def async_client(self) -> redis.asyncio.Redis:
        """An asyncio client (bots, APIs)."""
        return redis.asyncio.Redis.from_url(
            resolve_url(self.url),
            username=self.username,
            password=self.password,
            socket_timeout=self.socket_timeout,
            retry=redis.asyncio.retry.Retry(self._backoff(), self.retries),
        )
