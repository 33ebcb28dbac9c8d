"""Projections: the ``NotificationView`` a UI shows, snapshots, and rebuilding views.

The view is a function of the notification and its saga, so the projection handler and the
``rebuild-views`` command build it the same way. It is stored as JSON in
``notification/views`` (newest only), tagged with the recipient's email address, Slack
channel and entity, and an API returns its bytes as they are.

Views carry ``version`` (the two aggregates' versions added): a projection that loaded an
older state than the stored view does not overwrite it. Every ``snapshot_every`` events an
aggregate is snapshotted so loading it reads only the events after.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import orjson
import redis.asyncio
from pydantic import BaseModel, ConfigDict

from examples.notification import config
from examples.notification.aggregates import Notification
from examples.notification.saga import DELIVERY, saga_id
from streamcqrs.domain import Event
from streamcqrs.handlers import Context
from streamcqrs.handlers.saga import SagaState
from streamcqrs.streams import Subsystem

VIEWS = "notification/views"
VIEW_TYPE = "notification.NotificationView"


def iso(ms: int) -> str | None:
    """Epoch milliseconds as an ISO-8601 UTC time (None for 0: not yet)."""
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


class ChannelView(BaseModel):
    """One channel of a notification: where it went and how it went."""

    model_config = ConfigDict(frozen=True)

    address: str
    outcome: Literal["pending", "sent", "failed", "timed-out"]
    error: str | None = None
    at: str | None = None


class NotificationView(BaseModel):
    """What a UI shows about one notification (stored as JSON, served raw)."""

    model_config = ConfigDict(frozen=True)

    id: str
    status: str
    recipient: str
    subject: str
    email: str | None
    slack_channel: str | None
    channels: dict[str, ChannelView]
    reason: str | None
    errors: dict[str, str]
    requested_at: str | None
    deadline: str | None
    completed_at: str | None
    reported_to_team_at: str | None
    version: int


def build_view(notification: Notification, saga: SagaState) -> NotificationView:
    """The view of ``notification`` as of these states of it and its saga."""
    arrived = {o.label: o for op, o in saga.outcomes.items() if op in saga.awaited}
    channels: dict[str, ChannelView] = {}
    for channel in notification.channels:
        address = notification.email if channel == "email" else notification.slack_channel
        outcome = arrived.get(channel)
        if outcome is not None:
            channels[channel] = ChannelView(
                address=address,
                outcome="sent" if outcome.succeeded else "failed",
                error=outcome.error or None,
                at=iso(outcome.at_ms),
            )
        else:
            late = channel in notification.missing
            channels[channel] = ChannelView(
                address=address, outcome="timed-out" if late else "pending"
            )
    errors = dict(notification.failed)
    for channel in notification.missing:
        errors[channel] = "no outcome before the deadline"
    return NotificationView(
        id=notification.id,
        status=notification.status,
        recipient=notification.recipient,
        subject=notification.subject,
        email=notification.email or None,
        slack_channel=notification.slack_channel or None,
        channels=channels,
        reason=notification.reason or None,
        errors=errors,
        requested_at=iso(notification.requested_at_ms),
        deadline=iso(notification.deadline_ms),
        completed_at=iso(notification.completed_at_ms),
        reported_to_team_at=iso(notification.reported_at_ms),
        version=notification.version + saga.version,
    )


def view_tags(notification: Notification) -> list[tuple[str, str]]:
    """The tags a view is found by: the recipient's address, channel and entity."""
    tags = [("recipient", notification.recipient)]
    if notification.email:
        tags.append(("email", notification.email))
    if notification.slack_channel:
        tags.append(("slack", notification.slack_channel))
    return tags


def stored_version(raw: bytes | None) -> int:
    """The ``version`` of a stored view's JSON (-1 if there is none, or it has none)."""
    if raw is None:
        return -1
    try:
        found = orjson.loads(raw).get("version", -1)
    except (orjson.JSONDecodeError, AttributeError):
        return -1
    return found if isinstance(found, int) else -1


def notification_of(event: Event) -> str:
    """The notification an event is about: its own, or the one its delivery saga ends."""
    if getattr(event, "saga", None) == DELIVERY.name:
        return str(getattr(event, "target_id", ""))
    return str(getattr(event, "notification_id", ""))


async def project(event: Event, ctx: Context) -> None:
    """Projection bot: refresh the notification's view; snapshot every N events."""
    nid = notification_of(event)
    if not nid:
        return
    notification = await ctx.load(Notification, nid)
    saga = await ctx.load(SagaState, saga_id(nid))
    if not notification.version:
        return  # only saga events so far; the view starts with the notification
    view = build_view(notification, saga)
    if stored_version(await ctx.reader(VIEWS).latest_raw(nid)) >= view.version:
        return  # a projection of a newer state got there first
    ctx.put_view(VIEWS, nid, view.model_dump_json().encode(), type_name=VIEW_TYPE,
                 tags=view_tags(notification))  # fmt: skip
    every = config.current().snapshot_every
    for aggregate in (notification, saga):
        if aggregate.version and aggregate.version % every == 0:
            ctx.snapshot(aggregate)  # in the commit: stored only if it is still current


async def rebuild_views(client: redis.asyncio.Redis, *, partitions: int = 1) -> int:
    """Rebuild every notification's view from its events alone; return how many."""
    notification_sub = Subsystem("notification", client, partitions=partitions)
    ids: dict[str, None] = {}
    for record in await notification_sub.reader("events").read():
        nid = notification_of(record.message) if isinstance(record.message, Event) else ""
        if nid:
            ids[nid] = None
    notifications = notification_sub.aggregates(Notification)
    sagas = notification_sub.aggregates(SagaState)
    views = notification_sub.writer("views")
    built = 0
    for nid in ids:
        notification = await notifications.load(nid, use_snapshot=False)
        if not notification.version:
            continue
        saga = await sagas.load(saga_id(nid), use_snapshot=False)
        view = build_view(notification, saga)
        await views.put_view(nid, view.model_dump_json().encode(), type_name=VIEW_TYPE,
                             tags=view_tags(notification))  # fmt: skip
        built += 1
    return built


__all__ = [
    "VIEWS",
    "VIEW_TYPE",
    "ChannelView",
    "NotificationView",
    "build_view",
    "notification_of",
    "project",
    "rebuild_views",
    "stored_version",
    "view_tags",
]
