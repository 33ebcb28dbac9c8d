"""The client protocol on a real server, logged in as the client user ``streamcqrs acl`` makes.

``execute`` hands out one tracking id and stores one entry per idempotency key however many
calls race (one partition and three), the same user cannot read its stream nor move its
sequence, and ``status`` follows a bot's work: Available, Running (the entry pending),
Completed, or Failed with an open dead letter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.exceptions import NoPermissionError

from streamcqrs.bots.bot import Bot
from streamcqrs.bots.config import BotConfig
from streamcqrs.handlers import App, Context
from streamcqrs.handlers import acl as app_acl
from streamcqrs.streams import Kind, Settings, Subsystem, SubsystemKeys, acl
from streamcqrs.streams.client import Client, State, key_digest, tracking_message_id
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.envelope import encode, entries, parse
from streamcqrs.streams.errors import AlreadySet, IdempotencyKeyReused
from streamcqrs.streams.statuses import Status
from tests.messages import Ping
from tests.support import Backend

PASSWORD = acl.new_password()
CO = Kind.CLIENT_OPERATIONS
GATES: dict[int, asyncio.Event] = {}
"""Per Ping.n: the handler waits for it, so a test sees the record Running."""


def make_app(partitions: int) -> App:
    """An app with one concern on ``jobs/client-ops``: waits for its gate, fails on n < 0."""
    app = App("jobsapp")
    app.subsystem("jobs", partitions=partitions)

    @app.handler(Ping, stream="jobs/client-ops", concern="work")
    async def work(op: Ping, ctx: Context) -> None:
        gate = GATES.get(op.n)
        if gate is not None:
            await gate.wait()
        if op.n < 0:
            raise RuntimeError(f"cannot work on {op.n}")

    return app


class ClientUser:
    """The app's ``jobs-client`` user on the server, and clients logged in as it."""

    def __init__(self, backend: Backend, app: App) -> None:
        self.url = backend.url or ""
        self.admin = backend.sync_client()
        self.role = app_acl.client(app, "jobs")
        self.role.apply(self.admin, PASSWORD)
        self.clients: list[redis.asyncio.Redis] = []

    def aio(self) -> redis.asyncio.Redis:
        """An asyncio client logged in as ``jobs-client``."""
        settings = Settings(url=self.url, username=self.role.name, password=PASSWORD, retries=0)
        client = settings.async_client()
        self.clients.append(client)
        return client

    def close(self, run: Callable[[Any], Any]) -> None:
        for client in self.clients:
            run(client.aclose())
        self.admin.execute_command("ACL", "DELUSER", self.role.name)  # type: ignore[no-untyped-call]


@pytest.fixture(params=[1, 3], ids=["1-partition", "3-partitions"])
def setup(
    request: pytest.FixtureRequest, real: Backend, run: Callable[[Any], Any]
) -> Iterator[tuple[App, ClientUser]]:
    """The app (1 or 3 partitions) and its client user on a flushed real server."""
    app = make_app(request.param)
    user = ClientUser(real, app)
    yield app, user
    user.close(run)


def stored_ops(admin: redis.Redis, keys: SubsystemKeys) -> list[tuple[str, str, str]]:
    """(object id, message id, type) of every entry of jobs/client-ops, read as admin."""
    out = []
    for part in keys.all():
        key = part.stream(CO)
        for eid, raw in entries(admin.xrange(key)):
            envelope = parse(key, eid.decode(), raw)
            out.append((envelope.object_id, envelope.message_id, envelope.type))
    return out


def test_fifty_concurrent_executes_with_one_key_give_one_id_and_one_entry(
    setup: tuple[App, ClientUser], run: Callable[[Any], Any]
) -> None:
    """50 concurrent ``execute`` calls with one idempotency key, each on its own connection
    as the generated client user, all return the same tracking id, and the stream holds
    exactly one entry, under that id; a second key gets its own id and entry."""
    app, user = setup
    keys = SubsystemKeys("jobs", app.partitions_of("jobs"))

    async def scene() -> tuple[set[int], int]:
        clients = [Client(Subsystem("jobs", user.aio(), partitions=keys.partitions))
                   for _ in range(50)]  # fmt: skip
        ids = await asyncio.gather(
            *(c.execute(Ping(n=7), idempotency_key="order-7") for c in clients)
        )
        other = await clients[0].execute(Ping(n=8), idempotency_key="order-8")
        return set(ids), other

    ids, other = run(scene())
    assert 1 == len(ids)
    (tracking_id,) = ids
    ops = stored_ops(user.admin, keys)
    expected = {
        (str(tracking_id), tracking_message_id(keys, CO, tracking_id), "test.Ping"),
        (str(other), tracking_message_id(keys, CO, other), "test.Ping"),
    }
    assert expected == set(ops)
    assert 2 == len(ops)
    assert tracking_id != other


def test_the_client_user_cannot_read_its_stream_nor_move_its_sequence(
    setup: tuple[App, ClientUser], run: Callable[[Any], Any]
) -> None:
    """As the generated client user: XRANGE on the client-operation stream is refused, and
    INCRBY on its tracking-id sequence is refused (INCR, all ``next_id`` uses, is allowed),
    while the admin may do both (so the refusal is the ACL's)."""
    app, user = setup
    keys = SubsystemKeys("jobs", app.partitions_of("jobs"))
    stream = keys.for_object("1").stream(CO)
    sequence = keys.partition(0).sequence(CO)

    async def scene() -> list[str]:
        client = user.aio()
        await Client(Subsystem("jobs", client, partitions=keys.partitions)).execute(Ping(n=1))
        refusals = []
        for command in (("XRANGE", stream, "-", "+"), ("INCRBY", sequence, -1000)):
            try:
                await client.execute_command(*command)
            except NoPermissionError:
                refusals.append(command[0])
        await client.execute_command("INCR", sequence)
        return refusals

    assert ["XRANGE", "INCRBY"] == run(scene())
    assert 1 == len(user.admin.xrange(stream))
    assert 1 == user.admin.incrby(sequence, 0) - 1  # execute's INCR and the test's INCR


def test_a_key_reused_for_another_operation_is_refused(
    setup: tuple[App, ClientUser], run: Callable[[Any], Any]
) -> None:
    """The same idempotency key with a different operation raises IdempotencyKeyReused and
    writes nothing; with the same operation it returns the first tracking id."""
    app, user = setup
    keys = SubsystemKeys("jobs", app.partitions_of("jobs"))

    async def scene() -> tuple[int, int, str]:
        client = Client(Subsystem("jobs", user.aio(), partitions=keys.partitions))
        first = await client.execute(Ping(n=1), idempotency_key="k")
        again = await client.execute(Ping(n=1), idempotency_key="k")
        try:
            await client.execute(Ping(n=2), idempotency_key="k")
        except IdempotencyKeyReused as exc:
            return first, again, str(exc)
        return first, again, ""

    first, again, refusal = run(scene())
    assert first == again
    assert f"tracking id {first}" in refusal
    assert 1 == len(stored_ops(user.admin, keys))


def test_a_crash_between_reserving_a_key_and_putting_loses_nothing(
    real: Backend, run: Callable[[Any], Any]
) -> None:
    """With 3 partitions, a client that reserved an idempotency key and died before its put
    (simulated: the reserve commit alone) leaves the operation to the next call with the
    key: that call returns the reserved tracking id and stores exactly one entry."""
    keys = SubsystemKeys("jobs", 3)
    client = Client(Subsystem("jobs", real.client(), partitions=3))

    async def scene() -> tuple[int, int]:

        reserved = int(await client.client.incr(keys.partition(0).sequence(CO)))
        digest = key_digest("crashy")
        reserve = Commit()
        reserve.once(keys.for_object(digest).idempotency(CO, digest), 60_000, f"{reserved}:")
        await reserve.run(client.client)
        return reserved, await client.execute(Ping(n=3), idempotency_key="crashy")

    reserved, returned = run(scene())
    assert reserved == returned
    admin = real.sync_client()
    assert [(str(reserved), tracking_message_id(keys, CO, reserved), "test.Ping")] == stored_ops(
        admin, keys
    )


def test_a_once_key_refuses_the_whole_commit(real: Backend, run: Callable[[Any], Any]) -> None:
    """``Commit.once``: the first commit sets the key (to the entry id of its put, when no
    value is given); a second commit through the same key is refused with AlreadySet naming
    what the key holds, and writes none of its other intents."""
    part = SubsystemKeys("jobs").partition(0)

    async def scene() -> tuple[list[Any], AlreadySet | None]:
        client = real.client()
        first = Commit()
        first.put_at(part, CO, encode(Ping(n=1), object_id="a"))
        first.once("{jobs.0}:guard", 60_000)
        replies = await first.run(client)
        second = Commit()
        second.put_at(part, CO, encode(Ping(n=2), object_id="b"))
        second.once("{jobs.0}:guard", 60_000)
        try:
            await second.run(client)
        except AlreadySet as exc:
            return replies, exc
        return replies, None

    replies, refusal = run(scene())
    entry_id = replies[0][0].decode()
    assert entry_id == replies[1].decode()
    assert refusal is not None
    assert ("{jobs.0}:guard", entry_id) == (refusal.key, refusal.value)
    assert 1 == real.sync_client().xlen(part.stream(CO))


async def _wait_state(
    client: Client, tracking_id: int, state: State, *, seconds: float = 10.0
) -> list[State]:
    """Poll ``status`` (bounded) until the concern ``work`` is in ``state``; states seen."""
    seen: list[State] = []
    for _ in range(int(seconds / 0.02)):
        status = await client.status(tracking_id)
        work = status.concerns.get("work")
        now = work.state if work is not None else State.AVAILABLE
        if not seen or seen[-1] is not now:
            seen.append(now)
        if now is state:
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"{tracking_id} never got to {state}; seen {seen}")


def test_status_follows_the_bot_from_available_to_running_to_completed_or_failed(
    setup: tuple[App, ClientUser], run: Callable[[Any], Any]
) -> None:
    """As the client user, ``status`` says Available before any bot runs, Running while the
    handler works (the entry pending, nothing stored), Completed after; for an operation
    whose handler raises on its only attempt: Failed with an open dead letter. An id never
    executed is not found."""
    app, user = setup
    partitions = app.partitions_of("jobs")
    GATES.clear()
    GATES[5] = asyncio.Event()

    async def scene() -> dict[str, Any]:
        client = Client(Subsystem("jobs", user.aio(), partitions=partitions))
        ok = await client.execute(Ping(n=5))
        bad = await client.execute(Ping(n=-1))
        before = await client.status(ok)
        config = BotConfig(url=user.url, max_attempts=1, block_ms=50, consumer="t-1")
        bot = Bot(app, config)
        running = asyncio.create_task(bot.run())
        try:
            to_running = await _wait_state(client, ok, State.RUNNING)
            while_running = await client.status(ok)
            GATES[5].set()
            to_completed = await _wait_state(client, ok, State.COMPLETED)
            to_failed = await _wait_state(client, bad, State.FAILED)
            failed = await client.status(bad)
            unknown = await client.status(10_000)
        finally:
            bot.stop()
            await running
            await bot.client.aclose()
        return {
            "before": before, "to_running": to_running, "while_running": while_running,
            "to_completed": to_completed, "to_failed": to_failed, "failed": failed,
            "unknown": unknown,
        }  # fmt: skip

    seen = run(scene())
    before = seen["before"]
    assert (True, State.AVAILABLE, {}) == (before.found, before.state, dict(before.concerns))
    assert State.RUNNING == seen["to_running"][-1]
    assert State.RUNNING == seen["while_running"].state
    assert Status.RUNNING == seen["while_running"].concerns["work"].status
    # After the gate opens: still Running for a moment (or already done), then Completed.
    assert State.COMPLETED == seen["to_completed"][-1]
    assert set(seen["to_completed"]) <= {State.RUNNING, State.COMPLETED}
    failed = seen["failed"]
    assert (State.FAILED, True) == (failed.state, failed.dead_letter)
    assert failed.concerns["work"].dead_letter
    assert False is seen["unknown"].found
    assert {
        "tracking_id": failed.tracking_id, "found": True, "state": "Failed",
        "dead_letter": True,
        "concerns": {"work": {"state": "Failed", "status": "Failed", "dead_letter": True}},
    } == failed.as_dict()  # fmt: skip
