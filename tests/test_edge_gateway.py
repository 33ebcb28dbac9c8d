"""The HTTP gateway under uvicorn on loopback, over a real server: auth, scopes, bodies,
idempotency, status, views, subscriptions, realtime, and seed 002's session end to end with
the relay delivering to a real receiver.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamcqrs.bots.bot import Bot
from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.edge import Subscriptions, webhooks
from streamcqrs.bots.edge.gateway import create_gateway
from streamcqrs.bots.edge.receiver import Delivery, cookie_receiver
from streamcqrs.bots.edge.relay import relay_app
from streamcqrs.bots.edge.tokens import Tokens
from streamcqrs.streams import Kind, Subsystem, SubsystemKeys
from streamcqrs.streams.client import Client
from streamcqrs.streams.envelope import parse
from tests.edge_support import Receiver, eventually, receiver, serve
from tests.edgeapps import RequestFromHuman, app
from tests.support import Backend

HELLO = SubsystemKeys("hello")
EVERYTHING = ["execute:*", "views:*", "events:*", "subscribe:*", "full-data:*", "realtime:*"]


@pytest.fixture
def gateway(real: Backend) -> Iterator[str]:
    """The hello app's gateway on a flushed real server, under uvicorn on loopback."""
    with serve(create_gateway(app, url=real.url)) as base:
        yield base


def make_token(real: Backend, run: Callable[[Any], Any], name: str, scopes: list[str]) -> str:
    """A bearer token with ``scopes``."""
    token: str = run(Tokens(real.client()).create(name, scopes))
    return token


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of ``token``."""
    return {"authorization": f"Bearer {token}"}


def client_ops(real: Backend) -> int:
    """How many entries hello/client-ops holds."""
    with redis.Redis.from_url(real.url or "") as admin:
        return int(admin.xlen(HELLO.partition(0).stream(Kind.CLIENT_OPERATIONS)))


def test_401_403_404_422_and_an_invalid_body_writes_nothing(
    real: Backend, run: Callable[[Any], Any], gateway: str
) -> None:
    """No token or an unknown one: 401 (with WWW-Authenticate). A token without the scope:
    403. An unknown subsystem, operation type, tracking id or view: 404. A body that does
    not fit the operation's model (missing field, wrong type, extra field, not JSON): 422,
    and nothing is written."""
    full = make_token(real, run, "full", EVERYTHING)
    views_only = make_token(real, run, "views", ["views:hello"])
    post = f"{gateway}/ops/hello/request_from_human"
    with httpx.Client() as http:
        assert 401 == http.post(post, json={"name": "x"}).status_code
        unknown = http.post(post, json={"name": "x"}, headers=bearer("scq_nope"))
        assert (401, "Bearer") == (unknown.status_code, unknown.headers["www-authenticate"])
        assert 403 == http.post(post, json={"name": "x"}, headers=bearer(views_only)).status_code
        assert 404 == http.post(f"{gateway}/ops/nowhere/request_from_human", json={},
                                headers=bearer(full)).status_code  # fmt: skip
        assert 404 == http.post(f"{gateway}/ops/hello/nothing", json={},
                                headers=bearer(full)).status_code  # fmt: skip
        assert 404 == http.get(f"{gateway}/ops/hello/99", headers=bearer(full)).status_code
        assert 404 == http.get(f"{gateway}/views/hello/99", headers=bearer(full)).status_code
        assert 404 == http.get(f"{gateway}/views/subscriptions/x",
                               headers=bearer(full)).status_code  # fmt: skip
        bodies = [b"{}", b'{"name": 5}', b'{"name": "x", "admin": true}', b"not json",
                  b'{"name": ""}', b"[1, 2]", b"\xff\xfe"]  # fmt: skip
        for body in bodies:
            reply = http.post(post, content=body, headers=bearer(full))
            assert 422 == reply.status_code, (body, reply.text)
    assert 0 == client_ops(real)


def test_execute_with_a_key_status_and_the_view_as_stored(
    real: Backend, run: Callable[[Any], Any], gateway: str
) -> None:
    """POST answers 202 with the tracking id, the transaction id (the operation's message
    id) and where its status is; the same Idempotency-Key gives the same id and one entry;
    GET status answers the client protocol's status; GET a view answers its stored bytes."""
    token = make_token(real, run, "svc", ["execute:hello", "views:hello"])
    post = f"{gateway}/ops/hello/request_from_human"
    with httpx.Client(headers=bearer(token)) as http:
        first = http.post(post, json={"name": "ann"}, headers={"Idempotency-Key": "k-1"})
        again = http.post(post, json={"name": "ann"}, headers={"Idempotency-Key": "k-1"})
        assert (202, 202) == (first.status_code, again.status_code)
        assert first.json() == again.json()
        tracking = first.json()["tracking_id"]
        assert f"/ops/hello/{tracking}" == first.headers["location"]
        status = http.get(f"{gateway}/ops/hello/{tracking}")
        assert (200, "Available", True) == (
            status.status_code, status.json()["state"], status.json()["found"])
        raw = b'{"response":  "Hello, ann!" }'
        Subsystem("hello", real.client(), sync_client=real.sync_client()).sync_writer(
            "views").put_view(str(tracking), raw)
        view = http.get(f"{gateway}/views/hello/{tracking}")
        assert (200, raw) == (view.status_code, view.content)
    assert 1 == client_ops(real)


@pytest.fixture
def fuzz_token(real: Backend, run: Callable[[Any], Any]) -> str:
    """A token with every scope (made once per test: hypothesis reuses the fixture)."""
    return make_token(real, run, "fuzz", EVERYTHING)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(body=st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                 | st.text(max_size=30),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["name", "owner", "channel", "recipient", "uri"]),
                    st.text(max_size=40), max_size=3).map(lambda v: json.dumps(v).encode()),
))  # fmt: skip
def test_a_fuzzed_body_never_gets_a_500(
    real: Backend, gateway: str, fuzz_token: str, body: bytes
) -> None:
    """Whatever bytes are POSTed as an operation, a subscription or a registration, the
    gateway answers 2xx, 404 or 422, never 5xx; only bodies answered 202 wrote an entry."""
    before = client_ops(real)
    headers = bearer(fuzz_token)
    with httpx.Client(headers=headers) as http:
        replies = [
            http.post(f"{gateway}/ops/hello/request_from_human", content=body),
            http.post(f"{gateway}/subscriptions", content=body),
            http.post(f"{gateway}/register_for_events/", content=body),
            http.post(f"{gateway}/realtime/ev/trigger", content=body),
        ]
    assert all(r.status_code < 500 for r in replies), [(r.url, r.status_code, r.text)
                                                        for r in replies]  # fmt: skip
    written = 1 if replies[0].status_code == 202 else 0
    assert before + written == client_ops(real)


def test_subscriptions_over_http_need_their_key_to_be_deleted(
    real: Backend, run: Callable[[Any], Any], gateway: str
) -> None:
    """POST /subscriptions answers 201, a Location and an access key; the same owner and
    channel again replaces the cookie (200); DELETE without the key or with another is 403,
    with it 204, and then 404; a channel of a subsystem the token may not subscribe to is
    403, full data without its scope 403, a malformed channel 422."""
    token = make_token(real, run, "subs", ["subscribe:shop"])
    body = {"owner": "http://svc/", "channel": "event://shop/events/*",
            "recipient": {"uri": "http://127.0.0.1:9/notify", "auth_token": "APIKEY"},
            "cookie": "one"}  # fmt: skip
    with httpx.Client(headers=bearer(token)) as http:
        made = http.post(f"{gateway}/subscriptions", json=body)
        assert 201 == made.status_code, made.text
        location, key = made.headers["location"], made.json()["access_key"]
        assert location == made.json()["location"]
        again = http.post(f"{gateway}/subscriptions", json={**body, "cookie": "two"})
        assert (200, "replaced") == (again.status_code, again.json()["outcome"])
        seen = http.get(f"{gateway}{location}", headers={"x-access-key": key})
        assert ("two", "secret" in seen.json()) == (seen.json()["cookie"], False)
        assert 403 == http.delete(f"{gateway}{location}").status_code
        assert 403 == http.delete(f"{gateway}{location}",
                                  headers={"x-access-key": "wrong"}).status_code  # fmt: skip
        assert 204 == http.delete(f"{gateway}{location}",
                                  headers={"cookie": f"access-key={key}"}).status_code
        assert 404 == http.delete(f"{gateway}{location}",
                                  headers={"x-access-key": key}).status_code  # fmt: skip
        other = {**body, "channel": "event://bank/events/*"}
        assert 403 == http.post(f"{gateway}/subscriptions", json=other).status_code
        full = {**body, "full_data": True}
        assert 403 == http.post(f"{gateway}/subscriptions", json=full).status_code
        bad = {**body, "channel": "deki/users/login"}
        assert 422 == http.post(f"{gateway}/subscriptions", json=bad).status_code


def _relay_bot(url: str) -> Bot:
    config = BotConfig(url=url, block_ms=50, max_attempts=3, retry_base=0.05, retry_cap=0.2,
                       mover_interval=0.02, consumer="relay-g")  # fmt: skip
    return Bot(relay_app(["hello/client-ops"]), config)


def test_seed_002_session_against_the_gateway(
    real: Backend, run: Callable[[Any], Any], gateway: str
) -> None:
    """Seed 002's curl session, over HTTP: an event received before registration reaches
    nobody; after ``register_for_events`` exactly one signed POST reaches the registered URL
    per event, with the seed's reply shape on receipt; a replica registered with a range
    gets exactly the past events of that range (replayed, in order), then the live ones."""
    token = make_token(real, run, "seed", ["execute:hello", "subscribe:hello"])

    async def scene(hook: Receiver) -> dict[str, Any]:
        bot = _relay_bot(real.url or "")
        running = asyncio.create_task(bot.run())
        try:
            async with httpx.AsyncClient(base_url=gateway, headers=bearer(token)) as http:
                receive = "/receive_event/request_from_human"
                unregistered = await http.post(receive, json={"name": "tismoj while unregistered"})
                await asyncio.sleep(0.4)
                nothing_yet = list(hook.requests)
                registered = await http.post("/register_for_events/", json={"events_to_register": [
                    {"event": "request_from_human",
                     "urls_to_register": [{"url": f"{hook.url}/hello/"}]}]})  # fmt: skip
                now = await http.post(receive, json={"name": "tismoj now registered"})
                await eventually(lambda: hook.at("/hello/"), "the registered URL called")
                since = datetime.now(UTC) - timedelta(minutes=1)
                replica = await http.post("/register_for_events/", json={"events_to_register": [
                    {"event": "request_from_human", "since": since.isoformat(),
                     "urls_to_register": [{"url": f"{hook.url}/replica/"}]}]})  # fmt: skip
                await eventually(lambda: len(hook.at("/replica/")) >= 2, "the replica caught up")
                live = await http.post(receive, json={"name": "after the replica"})
                await eventually(lambda: len(hook.at("/replica/")) >= 3, "the replica live")
                await eventually(lambda: len(hook.at("/hello/")) >= 2, "hello live")
                await asyncio.sleep(0.3)
        finally:
            bot.stop()
            await running
            await bot.client.aclose()
        return {"unregistered": unregistered.json(), "nothing_yet": nothing_yet,
                "registered": registered.json(), "now": now, "replica": replica.json(),
                "live": live}  # fmt: skip

    with receiver() as hook:
        seen = run(scene(hook))
    received = seen["unregistered"]["event_received"]
    tid = received["data"]["transaction_id"]
    assert f"request_from_human:{tid}" == received["event"]
    assert "tismoj while unregistered" == received["data"]["name"]
    assert [] == seen["nothing_yet"]
    entry = seen["registered"]["registered_for_events"]["request_from_human"][f"{hook.url}/hello/"]
    hello = hook.at("/hello/")
    assert 2 == len(hello)
    assert [seen["now"].json()["event_received"]["data"]["transaction_id"],
            seen["live"].json()["event_received"]["data"]["transaction_id"]] == [
        r.json["data"]["object_id"] for r in hello]  # fmt: skip
    for request in hello:
        request.verify(entry["secret"])
    replica = hook.at("/replica/")
    assert 3 == len(replica)
    assert [True, True, False] == [bool(r.json["data"].get("replay")) for r in replica]
    assert [tid, seen["now"].json()["event_received"]["data"]["transaction_id"],
            seen["live"].json()["event_received"]["data"]["transaction_id"]] == [
        r.json["data"]["object_id"] for r in replica]  # fmt: skip
    secret = seen["replica"]["registered_for_events"]["request_from_human"][
        f"{hook.url}/replica/"]["secret"]  # fmt: skip
    for request in replica:
        request.verify(secret)


def test_realtime_over_http(real: Backend, run: Callable[[Any], Any], gateway: str) -> None:
    """MDriven's realtime events over HTTP: subscribe with an event id and a cookie, replace
    the cookie, trigger with data; the receiver gets the latest cookie and the data."""
    token = make_token(real, run, "rt", ["realtime:*"])

    async def scene(hook: Receiver) -> None:
        bot = _relay_bot(real.url or "")
        running = asyncio.create_task(bot.run())
        try:
            async with httpx.AsyncClient(base_url=gateway, headers=bearer(token)) as http:
                for cookie in ("Viewmodel=Pdf&RootId=1", "Viewmodel=Pdf&RootId=2"):
                    made = await http.post("/realtime/pdf-42/subscriptions",
                                           json={"uri": f"{hook.url}/pdf", "cookie": cookie})
                    assert made.status_code in (200, 201), made.text
                fired = await http.post("/realtime/pdf-42/trigger",
                                        json={"data": "done", "remove_after_send": True})
                assert 202 == fired.status_code
                await eventually(lambda: hook.at("/pdf"), "the trigger delivered")
        finally:
            bot.stop()
            await running
            await bot.client.aclose()

    with receiver() as hook:
        run(scene(hook))
        (only,) = hook.at("/pdf")
    data = only.json["data"]
    assert ("Viewmodel=Pdf&RootId=2", "pdf-42", "done") == (
        data["cookie"], data["event_id"], data["event_data"])


def test_the_receiving_side_turns_a_cookie_into_one_operation(
    real: Backend, run: Callable[[Any], Any]
) -> None:
    """A realtime subscription whose recipient is a ``cookie_receiver`` (a real server on
    loopback): a trigger's delivery is verified and its cookie becomes one operation in the
    hello subsystem; the same delivery sent twice more (as the relay retries: same
    webhook-id) makes no second one; a forged one is refused 401."""
    secret: dict[str, str] = {}

    def work(delivery: Delivery) -> RequestFromHuman | None:
        fields = delivery.fields()
        if fields.get("Viewmodel") != "Greet":
            return None
        return RequestFromHuman(name=fields["RootId"])

    # Its own client: the receiver runs on uvicorn's event loop, not the test's.
    hello = Client(Subsystem("hello", redis.asyncio.Redis.from_url(real.url or "")))
    receiving = cookie_receiver(hello, work, secret=lambda: secret["key"], path="/event")

    async def scene(base: str) -> int:
        subs = Subscriptions(real.client())
        made = await subs.subscribe_realtime("greet-7", "Viewmodel=Greet&RootId=ann",
                                             f"{base}/event")  # fmt: skip
        secret["key"] = made.secret
        bot = _relay_bot(real.url or "")
        running = asyncio.create_task(bot.run())
        try:
            await subs.trigger("greet-7", "now")
            await eventually(lambda: client_ops(real) >= 1, "the operation executed")
        finally:
            bot.stop()
            await running
            await bot.client.aclose()
        view = await subs.get(made.id)
        assert view is not None
        key = SubsystemKeys("realtime").partition(0).stream(Kind.EVENTS)
        ((entry_id, raw),) = real.sync_client().xrange(key)
        envelope = parse(key, entry_id.decode(), raw)
        again = webhooks.Event(
            subsystem="realtime", stream="events", entry_id=entry_id.decode(),
            message_id=envelope.message_id, type=envelope.type, object_id="greet-7",
            at_ms=envelope.created_at, channel=view.channel,
            trigger={"event_id": "greet-7", "data": "now"},
        )  # fmt: skip
        async with httpx.AsyncClient() as http:
            for _ in range(2):
                outcome, why = await webhooks.post(http, view, again)
                assert webhooks.Outcome.DELIVERED == outcome, why
            forged = await http.post(f"{base}/event", content=b'{"data": {}}', headers={
                "webhook-id": "x", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"})
        return forged.status_code

    with serve(receiving) as base:
        forged = run(scene(base))
    assert 401 == forged
    assert 1 == client_ops(real)
    with redis.Redis.from_url(real.url or "") as admin:
        ((_, raw),) = admin.xrange(HELLO.partition(0).stream(Kind.CLIENT_OPERATIONS))
    assert b"request_from_human" == raw[b"type"]
