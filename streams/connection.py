"""Connection settings and clients: one place that knows how to reach the server.

``Settings.check`` connects once before anything is started on a server (a bot supervisor
forking workers): what no retry can fix (a database the server does not have, a login it
refuses) becomes a ConfigurationError that names the fix; ``config_problem`` reads those
refusals out of redis-py's errors for every other caller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.streams._replies import login_refused, no_such_database
from streamcqrs.streams.errors import ServerUnavailable
from streamcqrs.streams.server import NO_SERVER_HINT, redact, resolve_url

CHECK_TIMEOUT = 3.0
"""Seconds ``Settings.check`` waits for the server to answer."""


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

    def check(self, timeout: float = CHECK_TIMEOUT) -> None:
        """Connect once, log in, select the database and PING.

        ConfigurationError for what no retry fixes (a database the server does not have, a
        refused login); ServerUnavailable if nothing answers at the URL.
        """
        url = resolve_url(self.url)
        client = redis.Redis.from_url(
            url,
            username=self.username,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=redis.retry.Retry(self._backoff(), 0),
        )
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


__all__ = ["CHECK_TIMEOUT", "Settings", "config_problem"]
