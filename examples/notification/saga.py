"""The saga that turns the channels' outcomes (or the deadline) into the notification's end.

It is the framework's saga (``streamcqrs.handlers.saga``), declared here: its aggregates live
in ``notification`` (id ``<tracking id>.saga``), it ends a ``Notification``, and the email and
Slack subsystems report its outcomes: their sent/failed events, and the dead letter of a send
operation that went Failed. The notification bot starts it with the send operations it
awaits, a deadline, and what to write for each ending (``notify.request_notification``):
``NotificationSent`` naming the channels when all succeeded, ``NotificationFailed`` naming
the failed channels with their errors and the succeeded ones when some failed, and
``NotificationFailed`` for timeout, naming the channels that never reported, when the
deadline passes first. Exactly one of them is appended to the notification, whatever order
the saga entry, the outcomes and the deadline arrive in.
"""

from __future__ import annotations

from examples.notification.aggregates import Notification
from examples.notification.messages import (
    EmailFailed,
    EmailSent,
    SlackMessageFailed,
    SlackMessageSent,
)
from streamcqrs.handlers.saga import Saga

HOME = "notification"
"""The subsystem the saga and the notification live in (also when handling email events)."""

DELIVERY = Saga(
    name="notification-saga",
    home=HOME,
    target=Notification,
    outcomes={
        EmailSent: True,
        EmailFailed: False,
        SlackMessageSent: True,
        SlackMessageFailed: False,
    },
    reports=["email", "slack"],
)
"""The notification's delivery saga: the app runs it with ``app.saga(DELIVERY)``."""


def saga_id(notification_id: str) -> str:
    """The saga aggregate's id for a notification."""
    return f"{notification_id}.saga"


__all__ = ["DELIVERY", "HOME", "saga_id"]
