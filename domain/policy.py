"""How an operation wants to be handled: attempts, backoff, a timeout, an expiry.

Naos operations carry their execution policy. Here an ``ExecutionPolicy`` travels with the
entry (beside its envelope), set on the operation class (``policy = ExecutionPolicy(...)``)
or on one put (``put(op, policy=...)``); each field left None falls back to the bot's
settings. An entry without a policy is handled exactly as before policies existed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Self

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamcqrs.domain.errors import ConfigurationError


class ExecutionPolicy(BaseModel):
    """Per-operation handling: set only what differs from the bot's settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int | None = Field(default=None, ge=1)
    """Attempts before the record is Failed and dead-lettered."""
    retry_base: float | None = Field(default=None, ge=0)
    """Seconds before the second attempt; doubled for each further one."""
    retry_cap: float | None = Field(default=None, ge=0)
    """Longest wait between two attempts, in seconds."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds a handler may run: past it, it is cancelled and the attempt counts as failed."""
    expires_at: int | None = None
    """Epoch ms after which the operation is not handled: its record is Failed, "expired"."""

    def expiring_in(self, after: timedelta | float) -> Self:
        """This policy with an expiry ``after`` (a timedelta or seconds) from now."""
        seconds = after.total_seconds() if isinstance(after, timedelta) else float(after)
        at = int((datetime.now().timestamp() + seconds) * 1000)
        return self.model_copy(update={"expires_at": at})

    def pack(self) -> bytes:
        """The policy as an entry field holds it: a msgpack map of the fields that are set."""
        packed: bytes = msgpack.packb(self.model_dump(exclude_none=True))
        return packed

    @staticmethod
    def packed_for(message: object, given: ExecutionPolicy | None = None) -> bytes:
        """What a put of ``message`` carries: ``given``, else its class's ``policy``, packed
        (empty: none)."""
        chosen = given if given is not None else getattr(type(message), "policy", None)
        return chosen.pack() if isinstance(chosen, ExecutionPolicy) else b""

    @classmethod
    def unpack(cls, raw: bytes) -> ExecutionPolicy:
        """Read what ``pack`` wrote; ConfigurationError naming the problem if it is not one."""
        try:
            return cls.model_validate(msgpack.unpackb(raw))
        except (ValueError, TypeError, ValidationError, msgpack.UnpackException) as exc:
            raise ConfigurationError(f"malformed execution policy {raw[:64]!r}: {exc}") from exc


__all__ = ["ExecutionPolicy"]
