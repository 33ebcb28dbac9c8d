"""The email bot and the Slack bot: send for real, then write the outcome to their own events.

Each send operation has a ``Delivery`` aggregate (in ``email`` or ``slack``) under its
delivery id. The outcome event is appended to it at version 0, so a send operation delivered
twice writes one outcome; a delivery that already has one is not sent again. Sending is
outside Redis, so it is at-least-once: the operation's message id goes along as the
idempotency key (the email's Message-ID, the webhook call's X-Idempotency-Key).

A failure that may pass (connection refused, timeout) is retried with backoff up to
``send_attempts``; a permanent one (550, 404 channel_not_found) becomes the failed event at
once, with the error.

The senders come from ``ctx.resources``: the app's startup hook made them once for the bot
process (``senders.open_senders``), so every Slack post goes through one HTTP client.
"""

from __future__ import annotations

from examples.notification import config
from examples.notification.aggregates import Delivery
from examples.notification.messages import (
    EmailFailed,
    EmailSent,
    SendEmail,
    SendSlackMessage,
    SlackMessageFailed,
    SlackMessageSent,
)
from examples.notification.senders import EmailSender, SendFailure, SlackSender
from streamcqrs.domain import Event
from streamcqrs.handlers import Context, Retry
from streamcqrs.streams import now_ms


def _give_up_or_retry(failure: SendFailure, ctx: Context) -> str:
    """The error to record if this failure is final; raise Retry if another try may help."""
    settings = config.current()
    if failure.permanent:
        return failure.reason
    if ctx.attempt < settings.send_attempts:
        raise Retry(delay=settings.retry_delay * 2 ** (ctx.attempt - 1), reason=failure.reason)
    return f"{failure.reason} (gave up after {ctx.attempt} attempts)"


async def send_email(op: SendEmail, ctx: Context) -> None:
    """Email bot: deliver ``op`` over SMTP; append EmailSent or EmailFailed."""
    delivery = await ctx.load(Delivery, op.delivery_id)
    if delivery.done:
        return
    outcome: Event
    common = {
        "delivery_id": op.delivery_id,
        "operation_id": ctx.message_id,
        "to": op.to,
        "notification_id": op.notification_id,
        "purpose": op.purpose,
    }
    try:
        sender: EmailSender = ctx.resources["email"]  # made once, in senders.open_senders
        await sender.send_email(op, ctx.message_id)
        outcome = EmailSent(**common, at_ms=now_ms())
    except SendFailure as failure:
        error = _give_up_or_retry(failure, ctx)
        ctx.log.warning("email not delivered", to=op.to, error=error)
        outcome = EmailFailed(**common, error=error, at_ms=now_ms())
    ctx.append(delivery, outcome, tags=[("to", op.to), ("notification", op.notification_id)])


async def send_slack(op: SendSlackMessage, ctx: Context) -> None:
    """Slack bot: post ``op`` to the webhook; append SlackMessageSent or SlackMessageFailed."""
    delivery = await ctx.load(Delivery, op.delivery_id)
    if delivery.done:
        return
    outcome: Event
    common = {
        "delivery_id": op.delivery_id,
        "operation_id": ctx.message_id,
        "channel": op.channel,
        "notification_id": op.notification_id,
    }
    try:
        sender: SlackSender = ctx.resources["slack"]  # one HTTP client for every post
        await sender.send_slack(op, ctx.message_id)
        outcome = SlackMessageSent(**common, at_ms=now_ms())
    except SendFailure as failure:
        error = _give_up_or_retry(failure, ctx)
        ctx.log.warning("Slack message not delivered", channel=op.channel, error=error)
        outcome = SlackMessageFailed(**common, error=error, at_ms=now_ms())
    tags = [("channel", op.channel), ("notification", op.notification_id)]
    ctx.append(delivery, outcome, tags=tags)


__all__ = ["send_email", "send_slack"]
