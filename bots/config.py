"""How a bot runs: concurrency, batching, timeouts, retries. One frozen value per process.

The defaults suit a production worker; tests shorten the timeouts through the same options
the CLI exposes (``--visibility-timeout 1``). ``bots.settings`` reads each from the
environment (``STREAMCQRS_CONCURRENCY``).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers.runner import RetryPolicy


@dataclass(frozen=True, slots=True)
class BotConfig:
    """Settings of one bot process (picklable: the supervisor hands it to its children)."""

    url: str | None = None
    """Server URL; None: ``REDIS_URL``, else a private server (resolved by the supervisor)."""
    concurrency: int = 64
    """Handlers in flight at once in this process, over all its consumer groups."""
    batch: int = 64
    """Most entries one XREADGROUP asks for."""
    block_ms: int = 500
    """How long one XREADGROUP waits for new entries; also how fast a stop is noticed."""
    only: tuple[str, ...] = ()
    """Run only the handlers whose input stream belongs to these subsystems (empty: all)."""
    visibility_timeout: float = 30.0
    """Seconds an entry may stay pending on a silent consumer before others take it over."""
    max_attempts: int = 5
    """Attempts of a failing handler before its record is marked Failed and dead-lettered."""
    retry_base: float = 1.0
    """Seconds before the 2nd attempt; doubled for each further one (then jittered)."""
    retry_cap: float = 300.0
    """Longest wait between two attempts, in seconds."""
    retry_jitter: float = 0.25
    """Fraction of a retry delay taken off at random, so retries of a burst spread out."""
    conflict_retries: int = 5
    """Immediate re-runs of a handler whose append met a concurrency conflict."""
    grace: float = 10.0
    """Seconds a stopping bot lets in-flight handlers finish before it releases them."""
    mover_interval: float = 0.1
    """Longest sleep of the delayed-entry mover between two looks at its sets."""
    dead_consumer_after: float = 3600.0
    """Seconds a consumer with nothing pending may stay idle before it is removed."""
    cluster: bool | None = None
    """Whether the server is a Redis Cluster; None: ask it. On a cluster, outputs bound for
    other hash tags go through the partition's outbox, and each bot runs a relay."""
    metrics: bool = False
    """Count deliveries and time handlers and commits for Prometheus (``bots.metrics``)."""
    cleaner_user: str | None = None
    """ACL user the cleaner logs in as on a connection of its own, its password from
    ``STREAMCQRS_CLEANER_PASSWORD`` (``streamcqrs acl`` prints it as ``<app>-cleaner``: the
    bot user may not trim or forget); None: the cleaner shares the bot's connection."""
    index: int = 0
    """This process's number under the supervisor (part of its consumer names)."""
    consumer: str = field(default="")
    """Consumer name; empty: ``host-pid-index``."""

    def __post_init__(self) -> None:
        for name in ("concurrency", "batch", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.visibility_timeout <= 0:
            raise ConfigurationError(
                f"visibility_timeout must be > 0 seconds, got {self.visibility_timeout}"
            )
        if not 0 <= self.retry_jitter < 1:
            raise ConfigurationError(f"retry_jitter must be in [0, 1), got {self.retry_jitter}")

    def for_process(self, index: int, url: str) -> BotConfig:
        """This config for worker ``index``, on the server the supervisor resolved."""
        return replace(self, index=index, url=url)

    def consumer_name(self) -> str:
        """Stable for the life of the process: the host, the pid and the worker index."""
        return self.consumer or f"{socket.gethostname()}-{os.getpid()}-{self.index}"

    @property
    def visibility_ms(self) -> int:
        """The visibility timeout in milliseconds (XAUTOCLAIM's min-idle-time)."""
        return max(1, int(self.visibility_timeout * 1000))

    @property
    def policy(self) -> RetryPolicy:
        """The retry settings as the runner takes them."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            retry_base=self.retry_base,
            retry_cap=self.retry_cap,
            retry_jitter=self.retry_jitter,
            conflict_retries=self.conflict_retries,
        )


__all__ = ["BotConfig"]
