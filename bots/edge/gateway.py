"""The HTTP gateway: an app's front door for clients that hold no Redis credentials.

>>> gateway = create_gateway(App.load("shop:app"))   # an ASGI app (FastAPI)
$ streamcqrs gateway shop:app --port 8080

Generated from the app's declarations: every operation type a handler takes from a
subsystem's client-operation stream can be POSTed there, validated against its model.

==============================================  ===========================================
``POST /ops/{subsystem}/{type}``                execute: 202 ``{tracking_id, transaction_id,
                                                status_url}``; ``Idempotency-Key`` honoured;
                                                ``?reply=seed002`` answers the seed's shape
``GET /ops/{subsystem}/{tracking_id}``          the operation's status per concern
``GET /views/{subsystem}/{object_id}``          a view, as stored
``POST /subscriptions``                         subscribe: 201, ``Location``, access key
``GET|DELETE /subscriptions/{id}``              with ``X-Access-Key`` (or an ``access-key``
                                                cookie); 403 without it
``POST /realtime/{event_id}/subscriptions``     MDriven's subscribe (event id and cookie)
``POST /realtime/{event_id}/trigger``           MDriven's trigger (data, remove after send)
``GET /live/{subsystem}/events?type=...``       events as Server-Sent Events
``GET /live/{subsystem}/views/{object_id}``     one view's versions as Server-Sent Events
``POST /receive_event/{type}``                  seed 002's receiver (``/ops`` by type alone)
``POST /register_for_events/``                  seed 002's registrar (subscriptions)
==============================================  ===========================================

Every request needs ``Authorization: Bearer <token>`` (401 without a valid one); the token's
scopes (``tokens``) decide what it may do (403). An unknown subsystem, type or id is 404; a
body that does not fit is 422 and writes nothing; a server that does not answer is 503.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import redis.asyncio
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from streamcqrs.bots.edge.channels import Channel
from streamcqrs.bots.edge.live import Hub
from streamcqrs.bots.edge.messages import key_hash
from streamcqrs.bots.edge.subscriptions import (
    REALTIME,
    SUBSCRIPTIONS,
    AccessDenied,
    Subscribing,
    SubscriptionError,
    Subscriptions,
    realtime_channel,
)
from streamcqrs.bots.edge.tokens import TOKENS, Token, Tokens
from streamcqrs.domain.errors import ConfigurationError, StreamCQRSError
from streamcqrs.domain.messages import Message
from streamcqrs.handlers import App
from streamcqrs.streams import Kind, Settings, Subsystem, SubsystemKeys
from streamcqrs.streams.client import Client, tracking_message_id
from streamcqrs.streams.errors import EncodeError, IdempotencyKeyReused

MAX_BODY = 1 << 20
"""Largest request body taken (the envelope's payload limit)."""
POOL = 64
"""Server connections the gateway keeps at most; a burst of requests waits for one (up to
``POOL_WAIT`` seconds) instead of failing ("too many connections")."""
POOL_WAIT = 20.0


def pooled_client(settings: Settings) -> redis.asyncio.Redis:
    """An asyncio client whose pool makes a burst of requests wait for a connection."""
    base = settings.async_client()
    pool = redis.asyncio.BlockingConnectionPool(
        connection_class=base.connection_pool.connection_class,
        max_connections=POOL,
        timeout=POOL_WAIT,
        **base.connection_pool.connection_kwargs,
    )
    return redis.asyncio.Redis(connection_pool=pool)


class Problem(Exception):
    """An answer other than success: status and what to do about it."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail
        self.headers = headers


class Recipient(BaseModel):
    """Where deliveries go, and the token the recipient wants to see (MindTouch's)."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=8, max_length=2000)
    auth_token: str = Field(default="", max_length=2000)


class SubscriptionBody(BaseModel):
    """``POST /subscriptions``."""

    model_config = ConfigDict(extra="forbid")

    owner: str = Field(min_length=1, max_length=500)
    channel: str = Field(min_length=1, max_length=500)
    recipient: Recipient
    cookie: str = Field(default="", max_length=4096)
    remove_after_send: bool = False
    full_data: bool = False
    secret: str | None = Field(default=None, pattern=r"^whsec_[A-Za-z0-9+/=]{16,200}$")
    since: datetime | None = None
    until: datetime | None = None


class RealtimeBody(BaseModel):
    """``POST /realtime/{event_id}/subscriptions``."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=8, max_length=2000)
    cookie: str = Field(default="", max_length=4096)
    owner: str | None = Field(default=None, min_length=1, max_length=500)
    auth_token: str = Field(default="", max_length=2000)


class TriggerBody(BaseModel):
    """``POST /realtime/{event_id}/trigger``."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(default="", max_length=65_536)
    remove_after_send: bool = False


class Url(BaseModel):
    url: str = Field(min_length=8, max_length=2000)


class Registration(BaseModel):
    """One event of seed 002's ``register_for_events`` body."""

    event: str = Field(min_length=1, max_length=200)
    urls_to_register: list[Url] = Field(min_length=1, max_length=100)
    since: datetime | None = None
    until: datetime | None = None


class RegisterBody(BaseModel):
    """Seed 002's ``POST /register_for_events/``."""

    events_to_register: list[Registration] = Field(min_length=1, max_length=100)


@dataclass
class Edge:
    """What the gateway's routes share, made at startup."""

    app: App
    client: redis.asyncio.Redis
    tokens: Tokens
    subscriptions: Subscriptions
    hub: Hub
    operations: dict[str, dict[str, type[Message]]]
    """Per subsystem: the operation types its client-operation stream takes, by type name."""
    readable: frozenset[str]
    """Subsystems whose views and events may be read (the app's; not the edge's own)."""

    def keys(self, subsystem: str) -> SubsystemKeys:
        """The key scheme of an app subsystem."""
        return SubsystemKeys(subsystem, self.app.partitions_of(subsystem))

    def client_of(self, subsystem: str) -> Client:
        """The client protocol on ``subsystem``'s client-operation stream."""
        return Client(Subsystem(subsystem, self.client,
                                partitions=self.app.partitions_of(subsystem)))  # fmt: skip


def operations_of(app: App) -> dict[str, dict[str, type[Message]]]:
    """Per subsystem, the operation types handlers take from its client-operation stream."""
    out: dict[str, dict[str, type[Message]]] = {}
    for spec in app.handlers:
        if spec.source.kind is Kind.CLIENT_OPERATIONS:
            for cls in spec.message_types:
                out.setdefault(spec.source.subsystem, {})[app.types.of_class(cls).name] = cls
    return out


def create_gateway(
    app: App,
    *,
    url: str | None = None,
    settings: Settings | None = None,
    client: redis.asyncio.Redis | None = None,
    subscriptions: str = SUBSCRIPTIONS,
    realtime: str = REALTIME,
    tokens: str = TOKENS,
    subscription_partitions: int = 1,
) -> FastAPI:
    """The gateway of ``app`` on the server at ``url`` (default ``REDIS_URL``), or as
    ``settings`` say (an ACL user: ``streamcqrs.bots.edge.acl.gateway``), or on ``client``."""

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        own = client is None
        connection = client or pooled_client(settings or Settings(url=url))
        edge = Edge(
            app=app, client=connection, tokens=Tokens(connection, subsystem=tokens),
            subscriptions=Subscriptions(connection, subsystem=subscriptions,
                                        partitions=subscription_partitions, realtime=realtime),
            hub=Hub(connection), operations=operations_of(app),
            readable=frozenset(app.subsystems() - {subscriptions, tokens}),
        )  # fmt: skip
        api.state.edge = edge
        try:
            yield
        finally:
            await edge.hub.close()
            if own:
                await connection.aclose()

    api = FastAPI(title=f"{app.name} gateway", lifespan=lifespan)
    _errors(api)
    _operation_routes(api)
    _subscription_routes(api, realtime)
    _live_routes(api)
    _seed_routes(api)
    return api


# -- the plumbing every route shares ---------------------------------------------------------


def _errors(api: FastAPI) -> None:
    @api.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @api.exception_handler(RedisError)
    async def unavailable(request: Request, exc: RedisError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the store is unavailable: {exc}; retry later"}, status_code=503
        )

    @api.exception_handler(StreamCQRSError)
    async def refused(request: Request, exc: StreamCQRSError) -> JSONResponse:
        status = 409 if isinstance(exc, IdempotencyKeyReused) else 503
        if isinstance(exc, (ConfigurationError, SubscriptionError, EncodeError)):
            status = 422
        return JSONResponse({"detail": str(exc)}, status_code=status)


def _edge(request: Request) -> Edge:
    edge: Edge = request.app.state.edge
    return edge


async def _token(request: Request) -> Token:
    """The request's bearer token, or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    found = await _edge(request).tokens.check(value.strip()) if scheme.lower() == "bearer" and \
        value.strip() else None  # fmt: skip
    if found is None:
        raise Problem(401, "a valid bearer token is needed: Authorization: Bearer <token> "
                      "(an operator makes one with 'streamcqrs token create')",
                      {"www-authenticate": "Bearer"})  # fmt: skip
    return found


def _allow(token: Token, action: str, subsystem: str) -> None:
    if not token.allows(action, subsystem):
        raise Problem(403, f"token {token.name!r} has no scope {action}:{subsystem}")


async def _body(request: Request, model: type[BaseModel]) -> Any:
    """The request body validated against ``model``, or 413/422."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise Problem(413, f"the body is over {MAX_BODY} bytes")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise Problem(422, exc.errors(include_url=False, include_context=False,
                                      include_input=False)) from None  # fmt: skip


def _readable(edge: Edge, subsystem: str) -> None:
    if subsystem not in edge.readable:
        raise Problem(404, f"no subsystem {subsystem!r} here")


# -- operations and views --------------------------------------------------------------------


def _operation_routes(api: FastAPI) -> None:
    @api.post("/ops/{subsystem}/{type_name}", status_code=202)
    async def execute(
        request: Request,
        subsystem: str,
        type_name: str,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
        reply: Annotated[str, Query(pattern="^(default|seed002)$")] = "default",
    ) -> Response:
        """Put an operation into the subsystem's client-operation stream; its tracking id."""
        return await _execute(request, subsystem, type_name, idempotency_key, reply)

    @api.get("/ops/{subsystem}/{tracking_id}")
    async def status(request: Request, subsystem: str, tracking_id: int) -> Response:
        """The operation's status per concern (Available, Running, Completed, Failed)."""
        edge, token = _edge(request), await _token(request)
        if subsystem not in edge.operations:
            raise Problem(404, f"no operations are taken on {subsystem!r}")
        _allow(token, "execute", subsystem)
        found = await edge.client_of(subsystem).status(tracking_id)
        if not found.found:
            raise Problem(404, f"no operation {tracking_id} in {subsystem!r}")
        return JSONResponse(found.as_dict())

    @api.get("/views/{subsystem}/{object_id}")
    async def view(request: Request, subsystem: str, object_id: str) -> Response:
        """A view as stored (its JSON bytes, not re-encoded)."""
        edge, token = _edge(request), await _token(request)
        _readable(edge, subsystem)
        _allow(token, "views", subsystem)
        sub = Subsystem(subsystem, edge.client, partitions=edge.app.partitions_of(subsystem))
        raw = await sub.reader(Kind.VIEWS).latest_raw(object_id)
        if raw is None:
            raise Problem(404, f"no view {object_id!r} in {subsystem!r}")
        return Response(raw, media_type="application/json")


async def _execute(
    request: Request, subsystem: str, type_name: str, key: str | None, reply: str
) -> Response:
    edge, token = _edge(request), await _token(request)
    types = edge.operations.get(subsystem)
    if types is None:
        raise Problem(404, f"no operations are taken on {subsystem!r}")
    cls = types.get(type_name)
    if cls is None:
        raise Problem(404, f"{subsystem!r} takes no operation {type_name!r}; it takes: "
                      f"{', '.join(sorted(types))}")  # fmt: skip
    _allow(token, "execute", subsystem)
    if key is not None and not 0 < len(key) <= 255:
        raise Problem(422, "Idempotency-Key must be 1 to 255 characters")
    op = await _body(request, cls)
    client = edge.client_of(subsystem)
    tracking_id = await client.execute(op, idempotency_key=key)
    transaction = tracking_message_id(client.keys, client.kind, tracking_id)
    location = f"/ops/{subsystem}/{tracking_id}"
    if reply == "seed002":
        data = {**op.model_dump(mode="json"), "transaction_id": str(tracking_id)}
        body: dict[str, Any] = {"event_received": {"event": f"{type_name}:{tracking_id}",
                                                   "data": data}}  # fmt: skip
    else:
        body = {"tracking_id": tracking_id, "transaction_id": transaction, "status_url": location}
    return JSONResponse(body, status_code=202, headers={"location": location})


# -- subscriptions ---------------------------------------------------------------------------


def _subscribed(made: Subscribing) -> JSONResponse:
    body: dict[str, Any] = {"id": made.id, "outcome": made.outcome, "location": made.location}
    if made.outcome == "created":
        body |= {"access_key": made.access_key, "secret": made.secret}
        return JSONResponse(body, status_code=201, headers={"location": made.location})
    return JSONResponse(body, status_code=404 if made.outcome == "absent" else 200)


def _access_key(request: Request) -> str:
    key = request.headers.get("x-access-key") or request.cookies.get("access-key") or ""
    if not key:
        raise Problem(403, "the subscription's access key is needed: X-Access-Key header "
                      "(or an access-key cookie)")  # fmt: skip
    return key


def _subscription_routes(api: FastAPI, realtime: str) -> None:
    @api.post("/subscriptions")
    async def subscribe(request: Request) -> Response:
        """Subscribe a recipient to a channel (again: replace the cookie; blank: end it)."""
        edge, token = _edge(request), await _token(request)
        body: SubscriptionBody = await _body(request, SubscriptionBody)
        try:
            channel = Channel.parse(body.channel)
        except ConfigurationError as exc:
            raise Problem(422, str(exc)) from None
        _allow(token, "subscribe", channel.subsystem)
        if body.full_data:
            _allow(token, "full-data", channel.subsystem)
        made = await edge.subscriptions.subscribe(
            owner=body.owner, channel=body.channel, uri=body.recipient.uri,
            auth_token=body.recipient.auth_token, secret=body.secret, cookie=body.cookie,
            remove_after_send=body.remove_after_send, full_data=body.full_data,
            since=body.since, until=body.until,
        )  # fmt: skip
        return _subscribed(made)

    @api.get("/subscriptions/{sid}")
    async def get_subscription(request: Request, sid: str) -> Response:
        """The subscription as its owner may see it (no secret), with its access key."""
        edge = _edge(request)
        await _token(request)
        key = _access_key(request)
        view = await edge.subscriptions.get(sid)
        if view is None:
            raise Problem(404, f"no subscription {sid!r}")
        if not _key_opens(view.key_hash, key):
            raise Problem(403, "the access key does not open this subscription")
        return JSONResponse(view.public())

    @api.delete("/subscriptions/{sid}", status_code=204)
    async def unsubscribe(request: Request, sid: str) -> Response:
        """End a subscription; needs its access key (403 without)."""
        edge = _edge(request)
        await _token(request)
        key = _access_key(request)
        view = await edge.subscriptions.get(sid)
        if view is None or not view.active:
            raise Problem(404, f"no active subscription {sid!r}")
        try:
            await edge.subscriptions.unsubscribe(sid, key)
        except AccessDenied as exc:
            raise Problem(403, str(exc)) from None
        return Response(status_code=204)

    @api.post("/realtime/{event_id}/subscriptions")
    async def realtime_subscribe(request: Request, event_id: str) -> Response:
        """MDriven's RealtimeSubscribeToEvent: the cookie comes back on each trigger."""
        edge, token = _edge(request), await _token(request)
        _allow(token, "realtime", realtime)
        body: RealtimeBody = await _body(request, RealtimeBody)
        _event_id(event_id)
        made = await edge.subscriptions.subscribe(
            owner=body.owner or body.uri, channel=realtime_channel(realtime, event_id),
            uri=body.uri, cookie=body.cookie, auth_token=body.auth_token,
        )  # fmt: skip
        return _subscribed(made)

    @api.post("/realtime/{event_id}/trigger", status_code=202)
    async def trigger(request: Request, event_id: str) -> Response:
        """MDriven's RealtimeTriggerEvent: every subscriber of the event id gets its cookie."""
        edge, token = _edge(request), await _token(request)
        _allow(token, "realtime", realtime)
        body: TriggerBody = await _body(request, TriggerBody)
        _event_id(event_id)
        message_id = await edge.subscriptions.trigger(
            event_id, body.data, remove_after_send=body.remove_after_send
        )
        return JSONResponse({"message_id": message_id}, status_code=202)


def _event_id(event_id: str) -> None:
    try:
        Channel.parse(realtime_channel("x", event_id))
    except ConfigurationError:
        raise Problem(422, "an event id is 1 to 200 letters, digits and . _ - : @") from None
    if len(event_id) > 200:
        raise Problem(422, "an event id is 1 to 200 letters, digits and . _ - : @")


def _key_opens(stored_hash: str, key: str) -> bool:
    return secrets.compare_digest(stored_hash, key_hash(key))


# -- live push -------------------------------------------------------------------------------


def _sse(frames: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream",
                             headers={"cache-control": "no-cache",
                                      "x-accel-buffering": "no"})  # fmt: skip


def _live_routes(api: FastAPI) -> None:
    @api.get("/live/{subsystem}/events")
    async def live_events(
        request: Request,
        subsystem: str,
        type: Annotated[list[str] | None, Query(max_length=50)] = None,
        last_event_id: Annotated[str, Header(alias="Last-Event-ID", max_length=4000)] = "",
    ) -> Response:
        """The subsystem's events as they are written (``type`` filters), resumable."""
        edge, token = _edge(request), await _token(request)
        _readable(edge, subsystem)
        _allow(token, "events", subsystem)
        frames = edge.hub.events(edge.keys(subsystem), frozenset(type or ()), last_event_id)
        return _sse(frames)

    @api.get("/live/{subsystem}/views/{object_id}")
    async def live_view(
        request: Request,
        subsystem: str,
        object_id: str,
        last_event_id: Annotated[str, Header(alias="Last-Event-ID", max_length=200)] = "",
    ) -> Response:
        """One view's versions: the latest now (if newer than Last-Event-ID), then each new."""
        edge, token = _edge(request), await _token(request)
        _readable(edge, subsystem)
        _allow(token, "views", subsystem)
        return _sse(edge.hub.view(edge.keys(subsystem), object_id, last_event_id))


# -- seed 002: the event receiver and registrar ----------------------------------------------


def _seed_routes(api: FastAPI) -> None:
    @api.post("/receive_event/{type_name}", status_code=202)
    async def receive_event(
        request: Request,
        type_name: str,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> Response:
        """Seed 002's ``receive_event``: the operation type alone names its subsystem."""
        edge = _edge(request)
        await _token(request)
        subsystem = _only_subsystem_of(edge, type_name)
        return await _execute(request, subsystem, type_name, idempotency_key, "seed002")

    @api.post("/register_for_events/")
    async def register(request: Request) -> Response:
        """Seed 002's registrar: each URL subscribes to each event (an operation type), with
        an optional ``since``/``until`` range replayed first."""
        edge, token = _edge(request), await _token(request)
        body: RegisterBody = await _body(request, RegisterBody)
        out: dict[str, dict[str, Any]] = {}
        for each in body.events_to_register:
            subsystem = _only_subsystem_of(edge, each.event)
            _allow(token, "subscribe", subsystem)
            channel = f"event://{subsystem}/{Kind.CLIENT_OPERATIONS.value}/{each.event}"
            for target in each.urls_to_register:
                made = await edge.subscriptions.subscribe(
                    owner=target.url, channel=channel, uri=target.url, cookie=each.event,
                    since=each.since, until=each.until,
                )  # fmt: skip
                entry: dict[str, Any] = {"id": made.id, "outcome": made.outcome}
                if made.outcome == "created":
                    entry |= {"access_key": made.access_key, "secret": made.secret}
                out.setdefault(each.event, {})[target.url] = entry
        return JSONResponse({"registered_for_events": out})


def _only_subsystem_of(edge: Edge, type_name: str) -> str:
    found = [s for s, types in edge.operations.items() if type_name in types]
    if len(found) != 1:
        detail = f"no operation {type_name!r} is taken here" if not found else (
            f"{type_name!r} is taken by {', '.join(sorted(found))}: use /ops/SUBSYSTEM/TYPE"
        )  # fmt: skip
        raise Problem(404, detail)
    return found[0]


__all__ = ["MAX_BODY", "Edge", "create_gateway", "operations_of"]
