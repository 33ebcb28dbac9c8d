"""The notification bot: turn a client's request into sends, a saga, and a deadline.

One commit per request holds all of it: the notification's first event, the send operations
for the ``email`` and ``slack`` subsystems (tagged with the address and the channel), and the
start of the delivery saga awaiting exactly those operations (its entry, and its deadline
parked until due), with the notification's event for each way it can end. Either all of it is
written, or (after a crash) none, and the request is handled again with the same output ids.

Also here, the failure reporting of the Naos workflow: a ``NotificationFailed`` event puts a
``ReportFailure`` internal operation; handling it sends an email to the internal team; once
that email is sent, ``FailureReportedToInternalTeam`` is appended to the notification.
"""

from __future__ import annotations

from examples.notification import config
from examples.notification.aggregates import Notification, audit_tags
from examples.notification.messages import (
    EmailSent,
    FailureReportedToInternalTeam,
    NotificationFailed,
    NotificationRequested,
    NotificationSent,
    NotificationSuppressed,
    ReportFailure,
    SendEmail,
    SendNotification,
    SendSlackMessage,
)
from examples.notification.saga import DELIVERY, saga_id
from streamcqrs.handlers import Context
from streamcqrs.handlers.saga import Awaited, Ending
from streamcqrs.streams import now_ms


def email_delivery_id(notification_id: str) -> str:
    """The id of a notification's email delivery (an aggregate of ``email``)."""
    return f"{notification_id}.email"


def slack_delivery_id(notification_id: str) -> str:
    """The id of a notification's Slack delivery (an aggregate of ``slack``)."""
    return f"{notification_id}.slack"


def report_delivery_id(notification_id: str) -> str:
    """The id of the email that reports a notification's failure to the team."""
    return f"{notification_id}.report"


async def request_notification(op: SendNotification, ctx: Context) -> None:
    """Notification bot: create the notification and send it on the recipient's channels."""
    settings = config.current()
    nid = op.notification_id
    notification = await ctx.load(Notification, nid)
    if notification.version:
        return  # this request was handled already
    at = now_ms()
    recipient = settings.directory.get(op.recipient)
    seconds = op.deadline_seconds or settings.deadline
    requested = NotificationRequested(
        notification_id=nid,
        recipient=op.recipient,
        subject=op.subject,
        body=op.body,
        email=recipient.email if recipient else "",
        slack_channel=recipient.slack_channel if recipient else "",
        channels=recipient.channels() if recipient else (),
        deadline_ms=at + int(seconds * 1000),
        at_ms=at,
    )
    if recipient is None:
        ended = NotificationFailed(notification_id=nid, reason="unknown-recipient", at_ms=at)
        ctx.append(notification, requested, ended, tags=audit_tags(nid))
        return
    if not requested.channels:
        why = f"{op.recipient} opted out of every channel"
        suppressed = NotificationSuppressed(notification_id=nid, reason=why, at_ms=at)
        ctx.append(notification, requested, suppressed, tags=audit_tags(nid))
        return
    ctx.append(notification, requested, tags=audit_tags(nid))
    awaited: dict[str, Awaited] = {}
    if "email" in requested.channels:
        send = SendEmail(delivery_id=email_delivery_id(nid), to=recipient.email,
                         subject=op.subject, body=op.body, notification_id=nid)  # fmt: skip
        tags = [("to", recipient.email), ("notification", nid)]
        awaited["email"] = Awaited("email/client-ops", send, send.delivery_id, tags)
    if "slack" in requested.channels:
        post = SendSlackMessage(delivery_id=slack_delivery_id(nid), channel=recipient.slack_channel,
                                text=f"*{op.subject}*\n{op.body}", notification_id=nid)  # fmt: skip
        tags = [("channel", recipient.slack_channel), ("notification", nid)]
        awaited["slack"] = Awaited("slack/client-ops", post, post.delivery_id, tags)
    DELIVERY.start(
        ctx,
        saga_id=saga_id(nid),
        target_id=nid,
        awaited=awaited,
        deadline=requested.deadline_ms,
        on_success=Ending.of(NotificationSent, notification_id=nid, fill={"channels": "succeeded"}),
        on_failure=Ending.of(NotificationFailed, notification_id=nid, reason="channels-failed"),
        on_timeout=Ending.of(NotificationFailed, notification_id=nid, reason="timeout"),
        tags=audit_tags(nid),
    )


async def report_failure(event: NotificationFailed, ctx: Context) -> None:
    """On a failed notification, queue the internal operation that tells the team."""
    details = (
        f"failed channels: {dict(event.failed) or 'none'}; succeeded: "
        f"{list(event.succeeded) or 'none'}; no outcome by the deadline: "
        f"{list(event.missing) or 'none'}"
    )
    report = ReportFailure(notification_id=event.notification_id, reason=event.reason,
                           details=details)  # fmt: skip
    ctx.put("notification/internal-ops", report, object_id=event.notification_id)


async def email_internal_team(op: ReportFailure, ctx: Context) -> None:
    """Send the failure report to the internal team, through the email subsystem."""
    team = config.current().team_email
    nid = op.notification_id
    notification = await ctx.load(Notification, nid)
    if notification.reported_at_ms:
        return
    body = (
        f"Notification {nid} for {notification.recipient or '?'} "
        f"({notification.subject!r}) failed: {op.reason}.\n{op.details}\n"
    )
    send = SendEmail(delivery_id=report_delivery_id(nid), to=team,
                     subject=f"[notification {nid}] failed: {op.reason}", body=body,
                     notification_id=nid, purpose="failure-report")  # fmt: skip
    ctx.put("email/client-ops", send, object_id=send.delivery_id,
            tags=[("to", team), ("notification", nid)])  # fmt: skip


async def record_report(event: EmailSent, ctx: Context) -> None:
    """Once the team's email is sent, record it on the notification."""
    if event.purpose != "failure-report":
        return
    notification = await ctx.load(Notification, event.notification_id, subsystem="notification")
    if notification.reported_at_ms or not notification.version:
        return
    reported = FailureReportedToInternalTeam(notification_id=event.notification_id,
                                             team_email=event.to, at_ms=event.at_ms)  # fmt: skip
    ctx.append(notification, reported, tags=audit_tags(event.notification_id))


__all__ = [
    "email_delivery_id",
    "email_internal_team",
    "record_report",
    "report_delivery_id",
    "request_notification",
    "slack_delivery_id",
]
