"""Live push over Server-Sent Events, from the gateway under uvicorn on loopback.

A UI waiting on a view gets each new version as it is committed, without polling, and a
reconnect with ``Last-Event-ID`` gets only what it missed; the same for a subsystem's events,
filtered by type.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from streamcqrs.bots.edge.gateway import create_gateway
from streamcqrs.bots.edge.tokens import Tokens
from streamcqrs.streams import AggregateStore, Commit, Kind, OnExisting, SubsystemKeys
from streamcqrs.streams.envelope import encode_view
from tests.edge_support import serve
from tests.edgeapps import Greeted, app
from tests.messages import Account, Opened
from tests.support import Backend

HELLO = SubsystemKeys("hello")


@pytest.fixture
def gateway(real: Backend) -> Iterator[str]:
    """The hello app's gateway on a flushed real server."""
    with serve(create_gateway(app, url=real.url)) as base:
        yield base


@pytest.fixture
def token(real: Backend, run: Callable[[Any], Any]) -> str:
    """A token that may read hello's views and events."""
    made: str = run(Tokens(real.client()).create("ui", ["views:hello", "events:hello"]))
    return made


READY = {"comment": "ready"}
"""What ``frames`` yields for the stream's ``: ready`` comment (the listener is attached)."""


async def frames(reply: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The SSE frames of a streaming reply; ``READY`` for its ready comment (other comments
    are skipped)."""
    frame: dict[str, str] = {}
    async for line in reply.aiter_lines():
        if line == ": ready":
            yield READY
        elif not line:
            if frame:
                yield frame
            frame = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            frame[name] = frame[name] + "\n" + value if name in frame else value


async def put_view(real: Backend, object_id: str, body: dict[str, Any]) -> None:
    """Commit a view version as a projection's commit would."""
    commit = Commit()
    envelope = encode_view(body, type_name="hello.View", object_id=object_id)
    commit.put(HELLO, Kind.VIEWS, envelope, on_existing=OnExisting.PRUNE, keep=1)
    await commit.run(real.client())


def test_a_ui_waiting_on_a_view_gets_its_terminal_version_within_200_ms(
    real: Backend, run: Callable[[Any], Any], gateway: str, token: str
) -> None:
    """Connected to a view's live URL, a UI gets its current version at once and the
    terminal version within 200 ms of the commit that writes it, with no request of its own
    in between; a reconnect with the Last-Event-ID of the first version gets only the
    latest (not the one it had)."""

    async def scene() -> tuple[list[dict[str, str]], float, list[dict[str, str]]]:
        await put_view(real, "7", {"status": "pending"})
        url = f"{gateway}/live/hello/views/7"
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"},
                                     timeout=10) as http:  # fmt: skip
            got: list[dict[str, str]] = []
            async with http.stream("GET", url) as reply:
                assert "text/event-stream" in reply.headers["content-type"]
                stream = frames(reply)
                assert READY == await anext(stream)
                got.append(await anext(stream))
                committed = time.monotonic()
                await put_view(real, "7", {"status": "sent"})
                got.append(await asyncio.wait_for(anext(stream), 5))
                latency = time.monotonic() - committed
            await put_view(real, "7", {"status": "sent", "read": True})
            headers = {"last-event-id": got[0]["id"]}
            async with http.stream("GET", url, headers=headers) as reply:
                stream = frames(reply)
                assert READY == await anext(stream)
                resumed = [await asyncio.wait_for(anext(stream), 5)]
                with pytest.raises(TimeoutError):
                    resumed.append(await asyncio.wait_for(anext(stream), 0.3))
        return got, latency, resumed

    got, latency, resumed = run(scene())
    assert [{"status": "pending"}, {"status": "sent"}] == [orjson.loads(f["data"]) for f in got]
    assert ["view", "view"] == [f["event"] for f in got]
    assert latency < 0.2, f"terminal version after {latency * 1000:.0f} ms"
    assert [{"status": "sent", "read": True}] == [orjson.loads(f["data"]) for f in resumed]


def test_events_filtered_by_type_and_resumed_with_last_event_id(
    real: Backend, run: Callable[[Any], Any], gateway: str, token: str
) -> None:
    """``/live/hello/events?type=hello.Greeted`` sends only that type, as it is written;
    after a disconnect, a reconnect with the Last-Event-ID of the last frame it got gets
    exactly the Greeted events written in between, then live ones; a token without the
    events scope is refused 403."""
    store = AggregateStore(HELLO, Account, real.client())

    async def greet(n: int) -> None:
        account = f"g-{n}"
        await store.append(account, [Greeted(response=f"hi {n}"), Opened(owner=str(n))],
                           expected_version=0)  # fmt: skip

    async def scene() -> tuple[list[str], list[str], int]:
        url = f"{gateway}/live/hello/events"
        params = {"type": "hello.Greeted"}
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"},
                                     timeout=10) as http:  # fmt: skip
            async with http.stream("GET", url, params=params) as reply:
                stream = frames(reply)
                assert READY == await asyncio.wait_for(anext(stream), 5)
                await greet(1)
                first = await asyncio.wait_for(anext(stream), 5)
            for n in (2, 3):
                await greet(n)
            headers = {"last-event-id": first["id"]}
            async with http.stream("GET", url, params=params, headers=headers) as reply:
                stream = frames(reply)
                assert READY == await asyncio.wait_for(anext(stream), 5)
                caught_up = [await asyncio.wait_for(anext(stream), 5) for _ in range(2)]
                await greet(4)
                caught_up.append(await asyncio.wait_for(anext(stream), 5))
            viewer = await Tokens(real.client()).create("viewer", ["views:hello"])
            refused = await http.get(url, headers={"authorization": f"Bearer {viewer}"})
        texts = [orjson.loads(f["data"])["data"]["response"] for f in [first, *caught_up]]
        types = [orjson.loads(f["data"])["type"] for f in [first, *caught_up]]
        return texts, types, refused.status_code

    texts, types, refused = run(scene())
    assert ["hi 1", "hi 2", "hi 3", "hi 4"] == texts
    assert {"hello.Greeted"} == set(types)
    assert 403 == refused


def test_live_needs_a_token(gateway: str) -> None:
    """Without a bearer token, the live URLs answer 401."""
    with httpx.Client() as http:
        assert 401 == http.get(f"{gateway}/live/hello/events").status_code
        assert 401 == http.get(f"{gateway}/live/hello/views/1").status_code
