"""The edge under least privilege: the gateway and the relay each logged in as the user
``streamcqrs.bots.edge.acl`` generates for them, on a real server.

Seed 002's flow end to end (execute with a key, status, a subscription with a replayed range,
signed deliveries, a view over SSE) works as those users; what they were not granted is
refused by the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from redis.exceptions import NoPermissionError

from streamcqrs.bots.bot import Bot
from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.edge import acl as edge_acl
from streamcqrs.bots.edge.gateway import create_gateway
from streamcqrs.bots.edge.relay import relay_app
from streamcqrs.bots.edge.tokens import Tokens
from streamcqrs.streams import Kind, Settings, Subsystem, SubsystemKeys, acl
from tests.edge_support import Receiver, eventually, receiver, serve
from tests.edgeapps import app
from tests.support import Backend

PASSWORD = acl.new_password()
HELLO = SubsystemKeys("hello")


@pytest.fixture
def users(real: Backend) -> Iterator[dict[str, acl.Role]]:
    """The gateway's and the relay's users, created on a flushed server, deleted after."""
    admin = real.sync_client()
    relay = relay_app(["hello/client-ops"])
    made = {"gateway": edge_acl.gateway(app), "relay": edge_acl.relay(relay)}
    for role in made.values():
        role.apply(admin, PASSWORD)
    yield made
    admin.execute_command("ACL", "DELUSER", *(r.name for r in made.values()))  # type: ignore[no-untyped-call]


def test_the_gateway_and_the_relay_work_as_their_generated_users(
    real: Backend, run: Callable[[Any], Any], users: dict[str, acl.Role],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Logged in as ``hello-gateway``, the gateway executes (with an idempotency key), answers
    status, makes a subscription with a range, serves a view over SSE; logged in as
    ``relay-bot``, the relay replays and delivers, signed. The gateway user cannot read the
    client-operation stream, write a view or move the sequence; the relay user cannot write
    a view of the app nor read the tokens."""
    url = real.url or ""
    gateway_user = Settings(url=url, username=users["gateway"].name, password=PASSWORD)
    token = run(Tokens(real.client()).create("all", ["execute:hello", "views:hello",
                                                     "subscribe:hello"]))  # fmt: skip
    monkeypatch.setenv("REDIS_USERNAME", users["relay"].name)
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    config = BotConfig(url=url, block_ms=50, retry_base=0.05, mover_interval=0.02,
                       consumer="relay-acl")  # fmt: skip
    relay = Bot(relay_app(["hello/client-ops"]), config)
    monkeypatch.delenv("REDIS_USERNAME")
    monkeypatch.delenv("REDIS_PASSWORD")

    async def scene(base: str, hook: Receiver) -> dict[str, Any]:
        out: dict[str, Any] = {}
        running = asyncio.create_task(relay.run())
        try:
            async with httpx.AsyncClient(base_url=base, timeout=10,
                                         headers={"authorization": f"Bearer {token}"}) as http:
                post = "/ops/hello/request_from_human"
                first = await http.post(post, json={"name": "ann"},
                                        headers={"Idempotency-Key": "a"})  # fmt: skip
                again = await http.post(post, json={"name": "ann"},
                                        headers={"Idempotency-Key": "a"})  # fmt: skip
                out["ids"] = {first.json()["tracking_id"], again.json()["tracking_id"]}
                tracking = first.json()["tracking_id"]
                out["status"] = (await http.get(f"/ops/hello/{tracking}")).status_code
                made = await http.post("/subscriptions", json={
                    "owner": "replica", "channel": "event://hello/client-ops/*",
                    "recipient": {"uri": f"{hook.url}/r"}, "since": "2000-01-01T00:00:00Z"})
                out["made"] = made.status_code
                secret = made.json()["secret"]
                await http.post(post, json={"name": "bo"})
                await eventually(lambda: len(hook.at("/r")) >= 2, "replay and live delivered")
                out["verified"] = [r.verify(secret)["data"]["object_id"] for r in hook.at("/r")]
                Subsystem("hello", real.client(), sync_client=real.sync_client()).sync_writer(
                    "views").put_view(str(tracking), {"done": True})
                async with http.stream("GET", f"/live/hello/views/{tracking}") as reply:
                    lines = reply.aiter_lines()
                    async for line in lines:
                        if line.startswith("data: "):
                            out["view"] = line
                            break
        finally:
            relay.stop()
            await running
            await relay.client.aclose()
        return out

    with serve(create_gateway(app, settings=gateway_user)) as base, receiver() as hook:
        seen = run(scene(base, hook))
    assert 1 == len(seen["ids"])
    assert (200, 201) == (seen["status"], seen["made"])
    assert 2 == len(seen["verified"])
    assert 'data: {"done":true}' == seen["view"]

    as_gateway = gateway_user.client()
    as_relay = Settings(url=url, username=users["relay"].name, password=PASSWORD).client()
    ops = HELLO.partition(0).stream(Kind.CLIENT_OPERATIONS)
    refused = []
    for client, command in (
        (as_gateway, ("XRANGE", ops, "-", "+")),
        (as_gateway, ("XADD", HELLO.partition(0).stream(Kind.VIEWS), "*", "f", "v")),
        (as_gateway, ("INCRBY", HELLO.partition(0).sequence(Kind.CLIENT_OPERATIONS), 5)),
        (as_relay, ("XADD", HELLO.partition(0).stream(Kind.VIEWS), "*", "f", "v")),
        (as_relay, ("HGET", "{gateway.0}:tokens", "x")),
    ):
        try:
            client.execute_command(*command)  # type: ignore[no-untyped-call]
        except NoPermissionError:
            refused.append(command[0])
    as_gateway.close()
    as_relay.close()
    assert ["XRANGE", "XADD", "INCRBY", "XADD", "HGET"] == refused
    with redis.Redis.from_url(url) as admin:
        assert 2 == admin.xlen(ops)
