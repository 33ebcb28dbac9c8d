"""The notification aggregate, and the delivery aggregates of the email and Slack subsystems.

A ``Notification`` lives in the ``notification`` subsystem under its tracking id. A
``Delivery`` lives in ``email`` or ``slack`` under its delivery id and holds the one outcome
of one send: its expected-version check is what keeps a redelivered send operation from
writing a second outcome.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from examples.notification.messages import (
    Channel,
    EmailFailed,
    EmailSent,
    FailureReportedToInternalTeam,
    NotificationFailed,
    NotificationRequested,
    NotificationSent,
    NotificationSuppressed,
    SlackMessageFailed,
    SlackMessageSent,
)
from streamcqrs.domain import Aggregate, Event

Status = Literal["new", "pending", "sent", "failed", "suppressed"]


def audit_tags(notification_id: str) -> list[tuple[str, str]]:
    """The tag every event of a notification and of its saga carries, so the event stream
    answers "what happened to notification N" by tag (a read the API's role allows)."""
    return [("notification", notification_id)]


class Notification(Aggregate):
    """One notification: what was asked, and how it ended (exactly one terminal event)."""

    recipient: str = ""
    subject: str = ""
    email: str = ""
    slack_channel: str = ""
    channels: tuple[Channel, ...] = ()
    status: Status = "new"
    requested_at_ms: int = 0
    deadline_ms: int = 0
    completed_at_ms: int = 0
    reason: str = ""
    """Why it failed (channels-failed, timeout, unknown-recipient) or was suppressed."""
    failed: dict[str, str] = Field(default_factory=dict)
    succeeded: tuple[Channel, ...] = ()
    missing: tuple[Channel, ...] = ()
    reported_at_ms: int = 0
    team_email: str = ""

    @property
    def terminal(self) -> bool:
        """True once the notification was sent, failed or suppressed."""
        return self.status in ("sent", "failed", "suppressed")

    def apply(self, event: Event) -> None:
        """Fold one event of this notification."""
        match event:
            case NotificationRequested():
                self.recipient = event.recipient
                self.subject = event.subject
                self.email = event.email
                self.slack_channel = event.slack_channel
                self.channels = event.channels
                self.requested_at_ms = event.at_ms
                self.deadline_ms = event.deadline_ms
                self.status = "pending"
            case NotificationSent():
                self.status = "sent"
                self.succeeded = event.channels
                self.completed_at_ms = event.at_ms
            case NotificationFailed():
                self.status = "failed"
                self.reason = event.reason
                self.failed = dict(event.failed)
                self.succeeded = event.succeeded
                self.missing = event.missing
                self.completed_at_ms = event.at_ms
            case NotificationSuppressed():
                self.status = "suppressed"
                self.reason = event.reason
                self.completed_at_ms = event.at_ms
            case FailureReportedToInternalTeam():
                self.reported_at_ms = event.at_ms
                self.team_email = event.team_email
            case _:
                raise TypeError(f"Notification cannot apply {type(event).__name__}")


class Delivery(Aggregate):
    """One send (an email or a Slack message) and its single outcome."""

    outcome: Literal["", "sent", "failed"] = ""
    error: str = ""

    @property
    def done(self) -> bool:
        """True once an outcome was written: a redelivered operation must not send again."""
        return bool(self.outcome)

    def apply(self, event: Event) -> None:
        """Fold the outcome event."""
        match event:
            case EmailSent() | SlackMessageSent():
                self.outcome = "sent"
            case EmailFailed() | SlackMessageFailed():
                self.outcome = "failed"
                self.error = event.error
            case _:
                raise TypeError(f"Delivery cannot apply {type(event).__name__}")


__all__ = ["Delivery", "Notification", "Status", "audit_tags"]
