"""The bot's side of the handling store: claim records before handling, record the outcome.

A record (one message, for one concern) is claimed (Running) in one round trip per read
batch; its outcome (Completed, retry, self-cancel, Failed) is written by the handler's commit
itself, so status, outputs and ack change together.

``streams.handling`` is written in a parallel change; until it is importable here, claims
always succeed and outcomes record nothing (the consumer group alone guarantees delivery).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import redis.asyncio

from streams.commit import Batch
from streams.keys import Kind, PartitionKeys, SubsystemKeys

_handling: Any
try:
    _handling = importlib.import_module("streams.handling")
except ImportError:  # pragma: no cover - only until the handling store lands
    _handling = None


class Outcome(StrEnum):
    """What a handling attempt ended in, as the bot records it."""

    COMPLETE = "COMPLETE"
    RETRY = "RETRY"
    SELF_CANCEL = "SELF_CANCEL"
    FAIL = "FAIL"


class Tracker:
    """Handling status of one (stream kind, concern) of one subsystem."""

    def __init__(
        self, client: redis.asyncio.Redis, keys: SubsystemKeys, kind: Kind, concern: str
    ) -> None:
        self.kind = kind
        self.concern = concern
        self._store: Any = (
            _handling.HandlingStore(client, keys, kind, concern) if _handling else None
        )

    @property
    def enabled(self) -> bool:
        """True when statuses are stored (the handling store is available)."""
        return self._store is not None

    async def claim(
        self, records: Sequence[tuple[str, str]], *, actor: str, reclaim: bool
    ) -> list[bool]:
        """Claim (message id, object id) records; True for each this bot should handle.

        A record Completed, Failed, disabled, or Running elsewhere without ``reclaim``
        comes back False: the bot acks its entry without running the handler.
        """
        if self._store is None or not records:
            return [True] * len(records)
        results = await self._store.claim(list(records), actor=actor, reclaim=reclaim)
        claimed = _handling.Claim.CLAIMED
        return [result == claimed for result, _status in results]

    def record(
        self,
        batch: Batch,
        keys: PartitionKeys,
        message_id: str,
        outcome: Outcome,
        *,
        details: str = "",
        actor: str = "",
    ) -> None:
        """Add the outcome's status change (checked: only from Running) to ``batch``."""
        if self._store is None:
            return
        action = getattr(_handling.Action, outcome.value)
        _handling.transition(
            batch, keys, self.kind, self.concern, message_id, action, details=details, actor=actor
        )


__all__ = ["Outcome", "Tracker"]
