"""The bot's side of the handling store: claim records before handling, record the outcome.

A record (one message, for one concern) is claimed (Running) in one round trip per read
batch; its outcome (Completed, retry, self-cancel, Failed) is written by the handler's commit
itself, so status, outputs and ack change together.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import redis.asyncio

from streamcqrs.streams.commit import Batch
from streamcqrs.streams.handling import Action, Claim, HandlingStore, transition
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys


class Outcome(StrEnum):
    """What a handling attempt ended in, as the bot records it."""

    COMPLETE = "COMPLETE"
    RETRY = "RETRY"
    SELF_CANCEL = "SELF_CANCEL"
    FAIL = "FAIL"


ACTIONS = {
    Outcome.COMPLETE: Action.COMPLETE,
    Outcome.RETRY: Action.RETRY,
    Outcome.SELF_CANCEL: Action.SELF_CANCEL,
    Outcome.FAIL: Action.FAIL,
}


class Tracker:
    """Handling status of one (stream kind, concern) of one subsystem."""

    def __init__(
        self, client: redis.asyncio.Redis, keys: SubsystemKeys, kind: Kind, concern: str
    ) -> None:
        self.kind = kind
        self.concern = concern
        self._store = HandlingStore(client, keys, kind, concern)

    async def claim(
        self, records: Sequence[tuple[str, str]], *, actor: str, reclaim: bool
    ) -> list[Claim]:
        """Claim (message id, object id) records in one round trip per partition.

        CLAIMED: run the handler. SKIPPED (Completed, Failed, disabled for the record, or
        Running elsewhere without ``reclaim``): ack without running. BLOCKED (the stream is
        disabled for this concern): leave the entry pending, to be looked at again.
        """
        if not records:
            return []
        results = await self._store.claim(list(records), actor=actor, reclaim=reclaim)
        return [result for result, _status in results]

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
        transition(
            batch,
            keys,
            self.kind,
            self.concern,
            message_id,
            ACTIONS[outcome],
            details=details,
            actor=actor,
        )


__all__ = ["Outcome", "Tracker"]
