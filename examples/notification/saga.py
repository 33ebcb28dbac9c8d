"""The saga that turns the channels' outcomes (or the deadline) into the notification's end.

The saga is an aggregate of the ``notification`` subsystem (id ``<tracking id>.saga``). It
moves only when something happens, never by polling:

* the saga entry arrives (``AwaitDeliveries``): it learns which operations it awaits;
* an outcome arrives on ``email/events`` or ``slack/events``: it records it;
* the deadline passes: a ``CheckDeadline`` operation, parked until the deadline, arrives.

After each, ``decide`` looks at the state. Once every awaited operation has an outcome it
settles on ``NotificationSent`` (all succeeded) or ``NotificationFailed`` (naming the failed
and the succeeded channels); if the deadline passed first, on ``NotificationFailed`` for
timeout. Settling appends the terminal event to the notification and ``SagaCompleted`` to the
saga in one commit, each at the version it was loaded at: two handlers racing to settle
cannot both commit (the loser reruns, finds the saga completed, and does nothing), and
anything arriving after that is a no-op. Outcomes may arrive in any order, even before the
saga entry is handled; they are kept and judged when it is.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from examples.notification.aggregates import Notification, audit_tags
from examples.notification.messages import (
    AwaitDeliveries,
    Channel,
    CheckDeadline,
    DeadlinePassed,
    EmailFailed,
    EmailSent,
    NotificationFailed,
    NotificationSent,
    OutcomeRecorded,
    SagaCompleted,
    SagaStarted,
    SlackMessageFailed,
    SlackMessageSent,
)
from streamcqrs.domain import Aggregate, Event
from streamcqrs.handlers import Context
from streamcqrs.streams import now_ms

Decision = NotificationSent | NotificationFailed
HOME = "notification"
"""The subsystem the saga and the notification live in (also when handling email events)."""


def saga_id(notification_id: str) -> str:
    """The saga aggregate's id for a notification."""
    return f"{notification_id}.saga"


class Outcome(BaseModel):
    """What one awaited operation reported."""

    model_config = ConfigDict(frozen=True)

    channel: Channel
    succeeded: bool
    error: str = ""
    at_ms: int = 0


class NotificationSaga(Aggregate):
    """What a notification waits for, what has arrived, and whether it is settled."""

    notification_id: str = ""
    started: bool = False
    awaited: dict[str, Channel] = Field(default_factory=dict)
    """Operation message id -> channel."""
    deadline_ms: int = 0
    outcomes: dict[str, Outcome] = Field(default_factory=dict)
    """Operation message id -> its outcome (may hold outcomes from before the start)."""
    deadline_passed: bool = False
    completed: bool = False
    result: str = ""

    def apply(self, event: Event) -> None:
        """Fold one saga event."""
        match event:
            case SagaStarted():
                self.notification_id = event.notification_id
                self.started = True
                self.awaited = dict(event.awaited)
                self.deadline_ms = event.deadline_ms
            case OutcomeRecorded():
                self.notification_id = event.notification_id
                self.outcomes[event.operation_id] = Outcome(
                    channel=event.channel,
                    succeeded=event.succeeded,
                    error=event.error,
                    at_ms=event.at_ms,
                )
            case DeadlinePassed():
                self.notification_id = event.notification_id
                self.deadline_passed = True
            case SagaCompleted():
                self.completed = True
                self.result = event.result
            case _:
                raise TypeError(f"NotificationSaga cannot apply {type(event).__name__}")

    def awaits(self, operation_id: str) -> bool:
        """True if an outcome of ``operation_id`` would still change this saga."""
        if self.completed or operation_id in self.outcomes:
            return False  # settled, or a duplicate of an outcome already recorded
        return not self.started or operation_id in self.awaited

    def decide(self, at_ms: int) -> Decision | None:
        """The terminal event the saga settles on now, or None while it must wait."""
        if self.completed or not self.started:
            return None
        arrived = {op: self.outcomes[op] for op in self.awaited if op in self.outcomes}
        succeeded = tuple(sorted(o.channel for o in arrived.values() if o.succeeded))
        failed = {o.channel: o.error for o in arrived.values() if not o.succeeded}
        if len(arrived) == len(self.awaited):
            if not failed:
                return NotificationSent(
                    notification_id=self.notification_id, channels=succeeded, at_ms=at_ms
                )
            return NotificationFailed(
                notification_id=self.notification_id,
                reason="channels-failed",
                failed=failed,
                succeeded=succeeded,
                at_ms=at_ms,
            )
        if self.deadline_passed:
            missing = tuple(sorted(ch for op, ch in self.awaited.items() if op not in arrived))
            return NotificationFailed(
                notification_id=self.notification_id,
                reason="timeout",
                failed=failed,
                succeeded=succeeded,
                missing=missing,
                at_ms=at_ms,
            )
        return None


async def settle(ctx: Context, saga: NotificationSaga) -> None:
    """If the saga can decide now, append the notification's terminal event and complete it."""
    at = now_ms()
    decision = saga.decide(at)
    if decision is None:
        return
    notification = await ctx.load(Notification, saga.notification_id, subsystem=HOME)
    if notification.terminal:
        return  # cannot happen while only the saga ends notifications; never end one twice
    tags = audit_tags(saga.notification_id)
    ctx.append(notification, decision, tags=tags)
    result = "sent" if isinstance(decision, NotificationSent) else "failed"
    ctx.append(
        saga,
        SagaCompleted(notification_id=saga.notification_id, result=result, at_ms=at),
        tags=tags,
    )
    ctx.log.info("notification settled", notification_id=saga.notification_id, result=result)


async def start_saga(entry: AwaitDeliveries, ctx: Context) -> None:
    """Saga bot: begin waiting for exactly the operations the entry names."""
    saga = await ctx.load(NotificationSaga, saga_id(entry.notification_id), subsystem=HOME)
    if saga.started:
        return  # the entry was handled before
    ctx.append(
        saga,
        SagaStarted(
            notification_id=entry.notification_id,
            awaited=entry.awaited,
            deadline_ms=entry.deadline_ms,
        ),
        tags=audit_tags(entry.notification_id),
    )
    await settle(ctx, saga)  # outcomes or the deadline may have come first


def _as_outcome(
    event: EmailSent | EmailFailed | SlackMessageSent | SlackMessageFailed,
) -> OutcomeRecorded:
    channel: Channel = "email" if isinstance(event, EmailSent | EmailFailed) else "slack"
    return OutcomeRecorded(
        notification_id=event.notification_id,
        operation_id=event.operation_id,
        channel=channel,
        succeeded=isinstance(event, EmailSent | SlackMessageSent),
        error=event.error if isinstance(event, EmailFailed | SlackMessageFailed) else "",
        at_ms=event.at_ms,
    )


async def record_outcome(
    event: EmailSent | EmailFailed | SlackMessageSent | SlackMessageFailed, ctx: Context
) -> None:
    """Saga bot: an email or Slack outcome arrived; record it and settle if it can."""
    if not event.notification_id or getattr(event, "purpose", "notification") != "notification":
        return  # a send no saga waits for (a failure report to the team)
    saga = await ctx.load(NotificationSaga, saga_id(event.notification_id), subsystem=HOME)
    if not saga.awaits(event.operation_id):
        ctx.log.info("outcome changes nothing", operation_id=event.operation_id,
                     completed=saga.completed)  # fmt: skip
        return
    ctx.append(saga, _as_outcome(event), tags=audit_tags(event.notification_id))
    await settle(ctx, saga)


async def check_deadline(op: CheckDeadline, ctx: Context) -> None:
    """Saga bot: the deadline passed; a saga still open ends in failure for timeout."""
    saga = await ctx.load(NotificationSaga, saga_id(op.notification_id), subsystem=HOME)
    if saga.completed or saga.deadline_passed:
        return
    passed = DeadlinePassed(notification_id=op.notification_id, at_ms=now_ms())
    ctx.append(saga, passed, tags=audit_tags(op.notification_id))
    await settle(ctx, saga)


__all__ = [
    "Decision",
    "NotificationSaga",
    "Outcome",
    "check_deadline",
    "record_outcome",
    "saga_id",
    "settle",
    "start_saga",
]
