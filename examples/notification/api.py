"""The HTTP API of the notification system (FastAPI; ``pip install 'streamcqrs[api]'``).

==========================================  ================================================
``POST /notifications``                     ask for a notification; 202 ``{"id": ...}``
``GET /notifications/{id}``                 its view, the stored JSON bytes as they are
``GET /notifications?email=a@example.com``  views of notifications to that address, newest
                                            first (found by the views' ``email`` tag)
``GET /notifications/{id}/events``          the notification's events: the audit trail
``GET /notifications/{id}/status``          where the request stands per concern (the
                                            client protocol's ``status``)
==========================================  ================================================

An unknown id answers 404 with a body saying so; malformed input answers 422 (FastAPI's
validation), never 500. ``POST`` takes an ``Idempotency-Key`` header (or
``idempotency_key`` in the body): a retried request returns the first one's id. Both
``POST`` and ``/status`` go through ``streamcqrs.streams.client``, so the API can connect as
the generated ``notification-client`` user for them.

Run it alone with ``python -m examples.notification api`` (or uvicorn on ``create_api()``).

With ``opentelemetry-instrumentation-fastapi`` installed, each request is a span; the put a
POST makes is its child, and the bots' spans downstream carry the same trace on, to the
notification's terminal event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import redis.asyncio
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from examples.notification.app import app as bots_app
from examples.notification.client import notification_status, send_notification
from streamcqrs.domain.errors import StreamCQRSError
from streamcqrs.streams import Settings, Subsystem

NotificationId = Annotated[
    str, Path(pattern=r"^[0-9]{1,20}$", description="the tracking id POST returned")
]
Email = Annotated[
    str,
    Query(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$",
          description="recipient email address"),
]  # fmt: skip


class NotificationRequest(BaseModel):
    """The body of ``POST /notifications``."""

    model_config = ConfigDict(extra="forbid")

    recipient: str = Field(min_length=1, max_length=200, description="entity id (directory)")
    subject: str = Field(min_length=1, max_length=500)
    body: str = Field(default="", max_length=20_000)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    deadline_seconds: float | None = Field(default=None, gt=0, le=86_400)


class Accepted(BaseModel):
    """The answer to ``POST /notifications``: the tracking id."""

    id: str


def _not_found(notification_id: str) -> JSONResponse:
    return JSONResponse(
        status_code=404,
        content={
            "detail": f"no notification with id {notification_id!r} (a notification requested "
            "moments ago shows up once the notification bot has handled it)"
        },
    )


def create_api(url: str | None = None, *, client: redis.asyncio.Redis | None = None) -> FastAPI:
    """The API on the server at ``url`` (default ``REDIS_URL``), or on ``client``."""

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        own = client is None
        connection = client or Settings(url=url).async_client()
        api.state.notification = Subsystem(
            "notification", connection, partitions=bots_app.partitions_of("notification")
        )
        try:
            yield
        finally:
            if own:
                await connection.aclose()

    api = FastAPI(title="Notifications", lifespan=lifespan)
    _traced(api)

    @api.exception_handler(RedisError)
    @api.exception_handler(StreamCQRSError)
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            content={"detail": f"the notification store is unavailable: {exc}; retry later"},
        )

    @api.exception_handler(StarletteHTTPException)
    async def body_unreadable(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers 400 for a body it cannot even parse (bad UTF-8); it is bad input
        # like any other, so it gets the same status as a body that fails validation.
        if exc.status_code == 400:
            return JSONResponse(status_code=422, content={"detail": exc.detail})
        return await http_exception_handler(request, exc)

    def notification_of(request: Request) -> Subsystem:
        sub: Subsystem = request.app.state.notification
        return sub

    @api.post("/notifications", status_code=202, response_model=Accepted)
    async def post_notification(
        request: Request,
        payload: NotificationRequest,
        idempotency_key: Annotated[
            str | None, Header(min_length=1, max_length=200, alias="Idempotency-Key")
        ] = None,
    ) -> Accepted:
        """Ask for a notification; returns its tracking id."""
        tracking_id = await send_notification(
            notification_of(request),
            payload.recipient,
            payload.subject,
            payload.body,
            idempotency_key=payload.idempotency_key or idempotency_key or "",
            deadline_seconds=payload.deadline_seconds,
        )
        return Accepted(id=tracking_id)

    @api.get("/notifications/{notification_id}", response_class=Response)
    async def get_notification(request: Request, notification_id: NotificationId) -> Response:
        """The notification's view: its stored JSON, not re-serialized."""
        raw = await notification_of(request).reader("views").latest_raw(notification_id)
        if raw is None:
            return _not_found(notification_id)
        return Response(content=raw, media_type="application/json")

    @api.get("/notifications", response_class=Response)
    async def list_notifications(
        request: Request,
        email: Email,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> Response:
        """Views of the notifications sent to ``email``, newest first."""
        records = await notification_of(request).reader("views").by_tag("email", email)
        records.sort(key=lambda r: int(r.object_id) if r.object_id.isdigit() else 0, reverse=True)
        raws = [r.raw for r in records[:limit]]
        return Response(content=b"[" + b",".join(raws) + b"]", media_type="application/json")

    @api.get("/notifications/{notification_id}/status")
    async def get_status(request: Request, notification_id: NotificationId) -> Response:
        """Where the request stands: per concern Available, Running, Completed or Failed."""
        status = await notification_status(notification_of(request), notification_id)
        if not status.found:
            return _not_found(notification_id)
        return JSONResponse(status.as_dict())

    @api.get("/notifications/{notification_id}/events", response_model=None)
    async def get_events(
        request: Request, notification_id: NotificationId
    ) -> list[dict[str, Any]] | JSONResponse:
        """The notification's events, oldest first: what happened, and when."""
        # By the audit tag on the events stream (a read the API's ACL role has), not the
        # aggregate's own stream; the saga's events carry the tag too and are left out.
        events = notification_of(request).reader("events")
        tagged = await events.by_tag("notification", notification_id)
        records = [r for r in tagged if r.object_id == notification_id]
        if not records:
            return _not_found(notification_id)
        return [
            {
                "version": r.envelope.seq,
                "type": r.envelope.type,
                "at_ms": r.created_at,
                "entry_id": r.entry_id,
                "data": r.message.model_dump(mode="json") if r.message is not None else None,
            }
            for r in records
        ]

    return api


def _traced(api: FastAPI) -> None:
    """A span per request, when the FastAPI instrumentation of OpenTelemetry is installed."""
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:
        return
    FastAPIInstrumentor.instrument_app(api)


__all__ = ["Accepted", "NotificationRequest", "create_api"]
