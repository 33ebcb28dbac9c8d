"""The webhook relay as a bot on a real server, delivering to a real receiver on loopback.

Subscriptions are made in Python (``Subscriptions``); events are appended as any app would;
the relay runs in this test's event loop; every delivery is checked against the Standard
Webhooks signature with the ``standardwebhooks`` package.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio

from streamcqrs.bots.bot import Bot
from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.edge import AccessDenied, Subscriptions, relay_app
from streamcqrs.bots.edge.messages import Subscription
from streamcqrs.domain import Event
from streamcqrs.streams import AggregateStore, SubsystemKeys, now_ms
from streamcqrs.streams.deadletter import read_dead_letters
from tests.edge_support import Receiver, eventually, receiver
from tests.messages import Account, Deposited, Opened
from tests.support import Backend

SHOP = SubsystemKeys("shop")


@pytest.fixture
def hook() -> Iterator[Receiver]:
    """A webhook receiver on loopback."""
    with receiver() as made:
        yield made


@asynccontextmanager
async def relay(url: str, *, max_attempts: int = 3) -> AsyncIterator[Bot]:
    """The relay watching shop/events, as a bot in this loop (quick retries for tests)."""
    config = BotConfig(url=url, block_ms=50, max_attempts=max_attempts, retry_base=0.05,
                       retry_cap=0.2, mover_interval=0.02, consumer="relay-1")  # fmt: skip
    bot = Bot(relay_app(["shop/events"]), config)
    running = asyncio.create_task(bot.run())
    try:
        yield bot
    finally:
        bot.stop()
        await running
        await bot.client.aclose()


async def append(client: redis.asyncio.Redis, account: str, *events: Event) -> None:
    """Append events to a shop account, as the shop's handlers would."""
    store = AggregateStore(SHOP, Account, client)
    version = await store.version(account)
    await store.append(account, list(events), expected_version=version)


def types_of(hook: Receiver, path: str) -> list[str]:
    """The event types delivered to ``path``, in arrival order."""
    return [r.json["type"] for r in hook.at(path)]


def test_wildcard_and_exact_channels_and_signatures(
    real: Backend, run: Callable[[Any], Any], hook: Receiver
) -> None:
    """An event written before any subscription reaches nobody; after subscribing, a wildcard
    channel gets events of both types, an exact one only its own, each exactly once, each
    delivery signed so that ``standardwebhooks`` verifies it with the subscription's secret,
    thin (ids, type, cookie; no event data) and with the recipient's bearer token."""

    async def scene() -> tuple[str, str]:
        client = real.client()
        subs = Subscriptions(client)
        await append(client, "a-0", Opened(owner="early"))
        every = await subs.subscribe(owner="svc", channel="event://shop/events/*",
                                     uri=f"{hook.url}/all", cookie="c-all",
                                     auth_token="tok-1")  # fmt: skip
        opened = await subs.subscribe(owner="svc", channel="event://shop/events/test.Opened",
                                      uri=f"{hook.url}/opened")  # fmt: skip
        async with relay(real.url or ""):
            await append(client, "a-1", Opened(owner="ann"), Deposited(amount=5))
            await eventually(lambda: len(hook.at("/all")) >= 2 and hook.at("/opened"),
                             "three deliveries")  # fmt: skip
            await asyncio.sleep(0.3)  # anything more (a duplicate) would show by now
        return every.secret, opened.secret

    every, opened = run(scene())
    assert ["test.Opened", "test.Deposited"] == types_of(hook, "/all")
    assert ["test.Opened"] == types_of(hook, "/opened")
    for request in hook.at("/all"):
        payload = request.verify(every)
        assert "c-all" == payload["data"]["cookie"]
        assert "a-1" == payload["data"]["object_id"]
        assert "event" not in payload["data"]
        assert "Bearer tok-1" == request.headers["authorization"]
    assert "ann" != hook.at("/opened")[0].json["data"].get("owner")
    hook.at("/opened")[0].verify(opened)


def test_a_replaced_cookie_is_the_only_one_delivered_and_full_data_is_opt_in(
    real: Backend, run: Callable[[Any], Any], hook: Receiver
) -> None:
    """Subscribing again with the same owner and channel replaces the cookie: deliveries
    carry only the latest one. A subscription with ``full_data`` gets the event's data."""

    async def scene() -> None:
        client = real.client()
        subs = Subscriptions(client)
        first = await subs.subscribe(owner="o", channel="event://shop/events/test.Opened",
                                     uri=f"{hook.url}/c", cookie="old", full_data=True)
        again = await subs.subscribe(owner="o", channel="event://shop/events/test.Opened",
                                     uri=f"{hook.url}/c", cookie="new")
        assert ("created", "replaced", first.id) == (first.outcome, again.outcome, again.id)
        async with relay(real.url or ""):
            await append(client, "b-1", Opened(owner="bo"))
            await append(client, "b-2", Opened(owner="cy"))
            await eventually(lambda: len(hook.at("/c")) >= 2, "two deliveries")

    run(scene())
    assert ["new", "new"] == [r.json["data"]["cookie"] for r in hook.at("/c")]
    assert [{"owner": "bo"}, {"owner": "cy"}] == [r.json["data"]["event"] for r in hook.at("/c")]


def test_a_one_shot_subscription_is_delivered_once_then_ends(
    real: Backend, run: Callable[[Any], Any], hook: Receiver
) -> None:
    """``remove_after_send``: of three matching events, one delivery; the subscription then
    ends (its view inactive, its aggregate Unsubscribed "sent once")."""

    async def scene() -> Subscription:
        client = real.client()
        subs = Subscriptions(client)
        made = await subs.subscribe(owner="o", channel="event://shop/events/*",
                                    uri=f"{hook.url}/once", remove_after_send=True)
        async with relay(real.url or ""):
            for n in range(3):
                await append(client, f"c-{n}", Opened(owner=str(n)))
            await eventually(lambda: hook.at("/once"), "the one delivery")
            view = await eventually(lambda: _inactive(subs, made.id), "the subscription ended")
            assert not view.active
            await asyncio.sleep(0.3)
        return await AggregateStore(subs.keys, Subscription, client).load(made.id)

    ended = run(scene())
    assert 1 == len(hook.at("/once"))
    assert (False, "sent once") == (ended.active, ended.ended)


async def _inactive(subs: Subscriptions, sid: str) -> Any:
    view = await subs.get(sid)
    return view if view is not None and not view.active else None


def test_a_failing_receiver_is_retried_then_dead_lettered_and_the_next_goes_on(
    real: Backend, run: Callable[[Any], Any], hook: Receiver
) -> None:
    """A receiver answering 500 gets the same delivery (same webhook-id) once per attempt,
    3 attempts, then the delivery is Failed and dead-lettered in the subscriptions
    subsystem; the delivery queued behind it waited, and goes out after it (order per
    subscriber)."""
    hook.first["/flaky"] = [500, 500, 500]

    async def scene() -> list[Any]:
        client = real.client()
        subs = Subscriptions(client)
        await subs.subscribe(owner="o", channel="event://shop/events/*", uri=f"{hook.url}/flaky")
        async with relay(real.url or ""):
            await append(client, "d-1", Opened(owner="first"))
            await append(client, "d-2", Opened(owner="second"))
            await eventually(lambda: len(hook.at("/flaky")) >= 4, "3 failed tries, then the next")
            letters = await eventually(lambda: read_dead_letters(client, subs.keys),
                                       "a dead letter")  # fmt: skip
            await asyncio.sleep(0.3)
        return list(letters)

    letters = run(scene())
    requests = hook.at("/flaky")
    assert ["d-1", "d-1", "d-1", "d-2"] == [r.json["data"]["object_id"] for r in requests]
    assert 1 == len({r.headers["webhook-id"] for r in requests[:3]})
    (letter,) = letters
    assert "deliver" == letter.letter.concern
    assert "answered 500" in letter.letter.reason


def test_deliveries_to_one_subscriber_keep_their_order_across_a_retry(
    real: Backend, run: Callable[[Any], Any], hook: Receiver
) -> None:
    """30 events in a burst, the receiver failing the first request: the first event is
    retried, and the receiver gets all 30 in the order they were written, each once after
    its success."""
    hook.first["/ordered"] = [503]

    async def scene() -> None:
        client = real.client()
        subs = Subscriptions(client)
        await subs.subscribe(owner="o", channel="event://shop/events/*",
                             uri=f"{hook.url}/ordered")  # fmt: skip
        async with relay(real.url or ""):
            for n in range(30):
                await append(client, "e", Deposited(amount=n))
            await eventually(lambda: len(hook.at("/ordered")) >= 31, "30 deliveries")
            await asyncio.sleep(0.3)

    run(scene())
    amounts = [r.json["data"]["message_id"] for r in hook.at("/ordered")]
    assert 31 == len(amounts)
    assert amounts[0] == amounts[1]  # the failed first try, then its retry
    events = run(AggregateStore(SHOP, Account, real.client()).events("e"))
    assert [r.envelope.message_id for r in events] == amounts[1:]


def test_a_receiver_answering_410_ends_its_subscription(
    real: Backend, run: Callable[[Any], Any], hook: Receiver
) -> None:
    """A 410 Gone ends the subscription at once: one request, nothing after it."""
    hook.answers["/gone"] = 410

    async def scene() -> Subscription:
        client = real.client()
        subs = Subscriptions(client)
        made = await subs.subscribe(owner="o", channel="event://shop/events/*",
                                    uri=f"{hook.url}/gone")
        async with relay(real.url or ""):
            await append(client, "f-1", Opened(owner="x"))
            await eventually(lambda: _inactive(subs, made.id), "the subscription ended")
            await append(client, "f-2", Opened(owner="y"))
            await asyncio.sleep(0.4)
        return await AggregateStore(subs.keys, Subscription, client).load(made.id)

    ended = run(scene())
    assert 1 == len(hook.at("/gone"))
    assert (False, "receiver answered 410 Gone") == (ended.active, ended.ended)


def test_a_range_is_replayed_first_then_live_ones_each_once(
    real: Backend, run: Callable[[Any], Any], hook: Receiver
) -> None:
    """A receiver registered with a range gets exactly the past events of that range, in
    order and marked as replayed, then the live ones, none twice, none missed: events keep
    coming while it registers and catches up."""

    async def scene() -> tuple[list[str], list[str], list[str]]:
        client = real.client()
        subs = Subscriptions(client)
        for n in range(3):
            await append(client, "g", Deposited(amount=n))  # before the range
        await asyncio.sleep(0.01)
        since = now_ms()
        for n in range(3, 8):
            await append(client, "g", Deposited(amount=n))
        async with relay(real.url or ""):
            writer = asyncio.create_task(_keep_appending(client, "g", range(8, 40)))
            await asyncio.sleep(0.02)
            await subs.subscribe(owner="replica-2", channel="event://shop/events/*",
                                 uri=f"{hook.url}/replica", since=since)
            await writer
            all_events = await AggregateStore(SHOP, Account, client).events("g")
            ids = [r.envelope.message_id for r in all_events]
            await eventually(lambda: hook.at("/replica") and hook.at("/replica")[-1].json[
                "data"]["message_id"] == ids[-1], "the last event delivered")
            await asyncio.sleep(0.3)
        got = [r.json["data"]["message_id"] for r in hook.at("/replica")]
        replayed = [r.json["data"]["message_id"] for r in hook.at("/replica")
                    if r.json["data"].get("replay")]  # fmt: skip
        return ids, got, replayed

    ids, got, replayed = run(scene())
    assert ids[3:] == got
    assert len(replayed) >= 5
    assert ids[3 : 3 + len(replayed)] == replayed


async def _keep_appending(client: redis.asyncio.Redis, account: str, amounts: range) -> None:
    for n in amounts:
        await append(client, account, Deposited(amount=n))
        await asyncio.sleep(0.005)


def test_deleting_needs_the_access_key(real: Backend, run: Callable[[Any], Any]) -> None:
    """``unsubscribe`` with a wrong key is refused (AccessDenied) and changes nothing; with
    the key it ends the subscription."""

    async def scene() -> tuple[bool, bool]:
        subs = Subscriptions(real.client())
        made = await subs.subscribe(owner="o", channel="event://shop/events/*",
                                    uri="http://127.0.0.1:9/x")
        with pytest.raises(AccessDenied):
            await subs.unsubscribe(made.id, "not-the-key")
        still = await subs.get(made.id)
        await subs.unsubscribe(made.id, made.access_key)
        gone = await subs.get(made.id)
        assert still is not None and gone is not None
        return still.active, gone.active

    assert (True, False) == run(scene())


def test_realtime_cookies_latest_wins_and_remove_after_send(
    real: Backend, run: Callable[[Any], Any], hook: Receiver
) -> None:
    """MDriven's realtime events: two receivers subscribe to an event id with their cookies
    (one replaces its cookie, one subscribes and ends with a blank cookie); a trigger brings
    each live subscriber its latest cookie and the trigger's data; a trigger with
    remove_after_send is the last each gets."""

    async def scene() -> None:
        client = real.client()
        subs = Subscriptions(client)
        await subs.subscribe_realtime("MovementDetected", "Viewmodel=A&RootId=1",
                                      f"{hook.url}/a")  # fmt: skip
        await subs.subscribe_realtime("MovementDetected", "Viewmodel=A&RootId=2",
                                      f"{hook.url}/a")  # fmt: skip
        await subs.subscribe_realtime("MovementDetected", "Viewmodel=B", f"{hook.url}/b")
        ended = await subs.subscribe_realtime("MovementDetected", "", f"{hook.url}/b")
        assert "removed" == ended.outcome
        await subs.subscribe_realtime("Other", "x", f"{hook.url}/other")
        async with relay(real.url or ""):
            await subs.trigger("MovementDetected", "zone 4", remove_after_send=True)
            await eventually(lambda: hook.at("/a"), "the trigger delivered")
            await subs.trigger("MovementDetected", "zone 5")
            await asyncio.sleep(0.4)

    run(scene())
    (only,) = hook.at("/a")
    data = only.json["data"]
    assert ("Viewmodel=A&RootId=2", "MovementDetected", "zone 4") == (
        data["cookie"], data["event_id"], data["event_data"])
    assert [] == hook.at("/b")
    assert [] == hook.at("/other")
