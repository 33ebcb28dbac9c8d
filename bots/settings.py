"""Every setting of ``streamcqrs run`` from the environment: ``STREAMCQRS_<NAME>``.

``STREAMCQRS_CONCURRENCY=32`` is ``--concurrency 32``; a flag on the command line wins over
the variable, and the variable over the default. The server stays ``REDIS_URL`` (with
``REDIS_USERNAME`` / ``REDIS_PASSWORD``), as everywhere else. Lists (``STREAMCQRS_ONLY``) are
names separated by commas or spaces; flags (``STREAMCQRS_CLUSTER``) are true/false, 1/0,
yes/no. A value that does not fit stops the command with one line naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streamcqrs.bots.config import BotConfig
from streamcqrs.domain.errors import ConfigurationError

PREFIX = "STREAMCQRS_"
CLEANER_PASSWORD = f"{PREFIX}CLEANER_PASSWORD"
"""The variable holding the cleaner user's password (never a flag: argv is visible to all)."""
_D = BotConfig()


class BotSettings(BaseSettings):
    """``streamcqrs run``'s settings (see the module docstring); each field is a flag too."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    processes: int = Field(1, ge=1, description="worker processes")
    concurrency: int = Field(_D.concurrency, ge=1, description="handlers in flight per process")
    batch: int = Field(_D.batch, ge=1, description="most entries per XREADGROUP")
    block_ms: int = Field(_D.block_ms, ge=1, description="longest wait of one XREADGROUP")
    only: Annotated[tuple[str, ...], NoDecode] = Field(
        _D.only, description="subsystems whose handlers to run (empty: all)"
    )
    visibility_timeout: float = Field(_D.visibility_timeout, gt=0)
    max_attempts: int = Field(_D.max_attempts, ge=1)
    retry_base: float = Field(_D.retry_base, ge=0)
    retry_cap: float = Field(_D.retry_cap, ge=0)
    retry_jitter: float = Field(_D.retry_jitter, ge=0, lt=1)
    conflict_retries: int = Field(_D.conflict_retries, ge=0)
    grace: float = Field(_D.grace, ge=0)
    mover_interval: float = Field(_D.mover_interval, gt=0)
    dead_consumer_after: float = Field(_D.dead_consumer_after, gt=0)
    cluster: bool | None = Field(_D.cluster, description="the server is a cluster (none: ask it)")
    cleaner_user: str | None = Field(None, description="ACL user the cleaner logs in as")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve /metrics here")
    metrics_host: str = Field("0.0.0.0", description="address the metrics port listens on")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("only", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        """``"email, slack"`` or ``"email slack"`` as a tuple of names."""
        if isinstance(value, str):
            return tuple(name for name in value.replace(",", " ").split() if name)
        return value

    def config(self) -> BotConfig:
        """The per-process settings a bot takes."""
        return BotConfig(
            concurrency=self.concurrency,
            batch=self.batch,
            block_ms=self.block_ms,
            only=self.only,
            visibility_timeout=self.visibility_timeout,
            max_attempts=self.max_attempts,
            retry_base=self.retry_base,
            retry_cap=self.retry_cap,
            retry_jitter=self.retry_jitter,
            conflict_retries=self.conflict_retries,
            grace=self.grace,
            mover_interval=self.mover_interval,
            dead_consumer_after=self.dead_consumer_after,
            cluster=self.cluster,
            metrics=self.metrics_port is not None,
            cleaner_user=self.cleaner_user or None,
        )


def load(overrides: Mapping[str, Any] | None = None) -> BotSettings:
    """The environment's settings with ``overrides`` (flags given on the command line) on top.

    ConfigurationError naming the variable when one does not fit.
    """
    given = {name: value for name, value in (overrides or {}).items() if value is not None}
    try:
        return BotSettings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        origin = f"--{name.replace('_', '-')}" if name in given else f"{PREFIX}{name.upper()}"
        raise ConfigurationError(
            f"{origin}: {first['msg']} (got {first.get('input')!r})"
        ) from None


__all__ = ["CLEANER_PASSWORD", "PREFIX", "BotSettings", "load"]
