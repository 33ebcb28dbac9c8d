"""The bot's one hook point for what it did: ``Observer.settled``, once per committed delivery.

The bot calls it after a delivery's commit went through (the outcome is then a fact): the
Attempt says how it went (completed, retried, failed, deferred, or only acked), how long the
handler ran and when its commit was sent and answered. The observer counts that in the
Prometheus metrics when they are on (``bots.metrics``) and records the commit's span under
the handler's span when tracing is on (``streams.tracing``). With both off it does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamcqrs.handlers.delivery import Delivery, Verdict
from streamcqrs.handlers.runner import Attempt
from streamcqrs.streams.tracing import record_span, tracer

if TYPE_CHECKING:
    from streamcqrs.bots.metrics import Metrics


class Observer:
    """What the bot tells about each delivery it committed."""

    __slots__ = ("metrics",)

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        """Prometheus counters and histograms of this process, or None (metrics off)."""

    def settled(self, delivery: Delivery, attempt: Attempt) -> None:
        """``delivery``'s commit went through: count its outcome, record its commit span."""
        if self.metrics is not None:
            self.metrics.settled(delivery, attempt)
        if delivery.verdict is not Verdict.SKIP and attempt.commit_ns[0] and tracer() is not None:
            envelope = delivery.input.envelope
            record_span(
                f"commit {delivery.source.ref}",
                parent=attempt.trace or (envelope.trace if envelope else ""),
                start_ns=attempt.commit_ns[0],
                end_ns=attempt.commit_ns[1],
                attributes={
                    "messaging.system": "redis",
                    "messaging.message.id": delivery.message_id,
                    "messaging.consumer.group.name": delivery.source.concern,
                    "streamcqrs.outcome": attempt.outcome.value if attempt.outcome else "ack",
                    "streamcqrs.outputs": attempt.commit.size,
                },
            )


__all__ = ["Observer"]
