"""The client protocol of the notification system: ask for a notification, get a tracking id.

>>> tracking_id = await send_notification(notification, "alice", "Deploy done", "v2 is live")

The tracking id comes from the client-operation stream's ``next_id()``; the operation is put
under it, and every later event, view and operation of the notification carries it.

With an idempotency key, a retried request (a timeout, a double click) does not make a second
notification: the operation is put with the key as its object id and ``OnExisting.SKIP``, so
only the first put writes; a retry reads that first operation back and returns its tracking
id. (That read is the one thing here beyond a write-only client's role: a client using keys
needs read access to ``notification/client-ops`` besides put.)
"""

from __future__ import annotations

from examples.notification.messages import SendNotification
from streamcqrs.streams import OnExisting, Subsystem
from streamcqrs.streams.errors import StreamError

CLIENT_OPS = "client-ops"


def idempotency_object_id(key: str) -> str:
    """The object id a request with idempotency key ``key`` is put under."""
    return f"key-{key}"


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
    written.
    """
    tracking_id = str(await notification.writer(CLIENT_OPS).next_id())
    op = SendNotification(
        notification_id=tracking_id,
        recipient=recipient,
        subject=subject,
        body=body,
        idempotency_key=idempotency_key,
        deadline_seconds=deadline_seconds,
    )
    if not idempotency_key:
        await notification.writer(CLIENT_OPS).put(op, object_id=tracking_id)
        return tracking_id
    object_id = idempotency_object_id(idempotency_key)
    put = await notification.writer(CLIENT_OPS).put(
        op, object_id=object_id, on_existing=OnExisting.SKIP
    )
    if put.written:
        return tracking_id
    first = await notification.reader(CLIENT_OPS).latest(object_id)
    if first is None or not isinstance(first.message, SendNotification):
        raise StreamError(
            f"a request with idempotency key {idempotency_key!r} exists (entry {put.entry_id}) "
            "but could not be read back; retry the request"
        )
    return first.message.notification_id


__all__ = ["idempotency_object_id", "send_notification"]
