"""The client protocol of the notification system: ask for a notification, get a tracking id.

>>> tracking_id = await send_notification(notification, "alice", "Deploy done", "v2 is live")
>>> (await notification_status(notification, tracking_id)).state
<State.COMPLETED: 'Completed'>

Both go through the framework's client protocol (``streamcqrs.streams.client``): the tracking
id comes from the client-operation stream's sequence, the operation is put under it (its
``notification_id`` is the tracking id, and so is the id of every later event, view and
operation of the notification), and ``status`` says where each concern stands.

With an idempotency key, a retried request (a timeout, a double click) does not make a second
notification: the put's own script keeps the key and answers a repeat with the first tracking
id. That works for the generated ``notification-client`` user, which may not read
``notification/client-ops``.
"""

from __future__ import annotations

from examples.notification.messages import SendNotification
from streamcqrs.streams import Subsystem
from streamcqrs.streams.client import Client, OperationStatus


async def send_notification(
    notification: Subsystem,
    recipient: str,
    subject: str,
    body: str,
    *,
    idempotency_key: str = "",
    deadline_seconds: float | None = None,
) -> str:
    """Ask for ``subject``/``body`` to be sent to entity ``recipient``; return the tracking id.

    ``notification`` is the notification subsystem on the caller's connection. Invalid input
    (empty subject, over-long fields) raises pydantic's ValidationError before anything is
    written, and before a tracking id is taken.
    """
    request = SendNotification(
        notification_id="0",  # validated now; the tracking id goes in when there is one
        recipient=recipient,
        subject=subject,
        body=body,
        idempotency_key=idempotency_key,
        deadline_seconds=deadline_seconds,
    )
    tracking_id = await Client(notification).execute(
        lambda tracking: request.model_copy(update={"notification_id": str(tracking)}),
        idempotency_key=idempotency_key or None,
    )
    return str(tracking_id)


async def notification_status(notification: Subsystem, tracking_id: str | int) -> OperationStatus:
    """Where the request stands, per concern handling it (the notification bot's)."""
    return await Client(notification).status(int(tracking_id))


__all__ = ["notification_status", "send_notification"]
