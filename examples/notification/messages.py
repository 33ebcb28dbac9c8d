"""Every operation and event of the notification example, with its stable stored name.

Three subsystems talk through these: ``notification`` (the client's operation, the
notification's and the saga's events, the internal operations), ``email`` and ``slack``
(their send operations and the outcome events). Every message that belongs to one
notification carries its ``notification_id``, the tracking id the client got back.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from streamcqrs.domain import Event, Operation, message

Channel = Literal["email", "slack"]
Purpose = Literal["notification", "failure-report"]
FailureReason = Literal["channels-failed", "timeout", "unknown-recipient"]

# -- notification: the client's operation ------------------------------------------------


@message("notification.SendNotification")
class SendNotification(Operation):
    """A client asks for ``subject``/``body`` to reach ``recipient`` on their channels."""

    notification_id: str = Field(min_length=1, max_length=40)
    recipient: str = Field(min_length=1, max_length=200)
    subject: str = Field(min_length=1, max_length=500)
    body: str = Field(max_length=20_000)
    idempotency_key: str = Field(default="", max_length=200)
    deadline_seconds: float | None = Field(default=None, gt=0, le=86_400)
    """How long the saga waits for the channels' outcomes (None: the configured default)."""


# -- notification: the aggregate's events ------------------------------------------------


@message("notification.NotificationRequested")
class NotificationRequested(Event):
    """The notification exists: who it is for, what it says, which channels it goes on."""

    notification_id: str
    recipient: str
    subject: str
    body: str
    email: str = ""
    slack_channel: str = ""
    channels: tuple[Channel, ...] = ()
    deadline_ms: int = 0
    at_ms: int


@message("notification.NotificationSent")
class NotificationSent(Event):
    """Terminal: every channel the notification went on reported success."""

    notification_id: str
    channels: tuple[Channel, ...]
    at_ms: int


@message("notification.NotificationFailed")
class NotificationFailed(Event):
    """Terminal: a channel failed, the deadline passed first, or the recipient is unknown."""

    notification_id: str
    reason: FailureReason
    failed: dict[str, str] = Field(default_factory=dict)
    """Channel -> the error it reported."""
    succeeded: tuple[Channel, ...] = ()
    missing: tuple[Channel, ...] = ()
    """Channels whose outcome had not arrived when the deadline passed."""
    at_ms: int


@message("notification.NotificationSuppressed")
class NotificationSuppressed(Event):
    """Terminal: the recipient opted out of every channel, so nothing was sent."""

    notification_id: str
    reason: str
    at_ms: int


@message("notification.FailureReportedToInternalTeam")
class FailureReportedToInternalTeam(Event):
    """The internal team was emailed about this notification's failure."""

    notification_id: str
    team_email: str
    at_ms: int


TERMINAL_EVENTS = (NotificationSent, NotificationFailed, NotificationSuppressed)
"""The events that end a notification; exactly one of them is ever appended."""

# -- notification: the failure report -----------------------------------------------------


@message("notification.ReportFailure")
class ReportFailure(Operation):
    """Internal operation: tell the internal team that a notification failed."""

    notification_id: str
    reason: FailureReason
    details: str


# -- email -------------------------------------------------------------------------------


@message("email.SendEmail")
class SendEmail(Operation):
    """Send one email; everything needed to compose and deliver it is here."""

    delivery_id: str
    to: str
    subject: str
    body: str
    notification_id: str = ""
    purpose: Purpose = "notification"


@message("email.EmailSent")
class EmailSent(Event):
    """The SMTP server accepted the email."""

    delivery_id: str
    operation_id: str
    to: str
    notification_id: str = ""
    purpose: Purpose = "notification"
    at_ms: int


@message("email.EmailFailed")
class EmailFailed(Event):
    """The email could not be delivered: refused for good, or still failing after retries."""

    delivery_id: str
    operation_id: str
    to: str
    error: str
    notification_id: str = ""
    purpose: Purpose = "notification"
    at_ms: int


# -- slack -------------------------------------------------------------------------------


@message("slack.SendSlackMessage")
class SendSlackMessage(Operation):
    """Post one message to a Slack channel through the incoming webhook."""

    delivery_id: str
    channel: str
    text: str
    notification_id: str = ""


@message("slack.SlackMessageSent")
class SlackMessageSent(Event):
    """The webhook accepted the message."""

    delivery_id: str
    operation_id: str
    channel: str
    notification_id: str = ""
    at_ms: int


@message("slack.SlackMessageFailed")
class SlackMessageFailed(Event):
    """The webhook refused the message, or kept failing after retries."""

    delivery_id: str
    operation_id: str
    channel: str
    error: str
    notification_id: str = ""
    at_ms: int


OutcomeEvent = EmailSent | EmailFailed | SlackMessageSent | SlackMessageFailed

__all__ = [
    "TERMINAL_EVENTS",
    "Channel",
    "EmailFailed",
    "EmailSent",
    "FailureReason",
    "FailureReportedToInternalTeam",
    "NotificationFailed",
    "NotificationRequested",
    "NotificationSent",
    "NotificationSuppressed",
    "OutcomeEvent",
    "Purpose",
    "ReportFailure",
    "SendEmail",
    "SendNotification",
    "SendSlackMessage",
    "SlackMessageFailed",
    "SlackMessageSent",
]
