"""Least-privilege ACL users generated from handler declarations, enforced by a real server.

Every forbidden (role, command, key) attempt below must be refused by the server: ``NOPERM``
for a command sent directly, ``ERR ACL failure in script`` for one a Lua script runs on the
caller's behalf. Each attempt is then repeated as the unrestricted default user, where it must
succeed, so a refusal is known to come from the ACL and not from a wrong key or type. The
allowed paths then run end to end through the framework as the generated users.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.asyncio
from redis.exceptions import NoPermissionError, ResponseError

from streamcqrs.domain.registry import registry
from streamcqrs.handlers import App, Context
from streamcqrs.handlers import acl as app_acl
from streamcqrs.streams import (
    Commit,
    Input,
    Kind,
    OnExisting,
    Settings,
    Subsystem,
    SubsystemKeys,
    acl,
    outbox,
)
from streamcqrs.streams.aggregates import AggregateStore
from streamcqrs.streams.connection import is_cluster
from streamcqrs.streams.deadletter import read_dead_letters_sync
from streamcqrs.streams.delayed import Delayed
from streamcqrs.streams.envelope import Entry, as_str, encode, parse
from streamcqrs.streams.errors import PermissionDenied, StreamError
from streamcqrs.streams.statuses import Action, Status, decode_stored
from tests.messages import Account, Deposited, Opened, Ping
from tests.support import Backend, async_client, refused_lines

APP = App("acltest")
APP.subsystem("billing", partitions=2)


@APP.handler(
    Ping,
    stream="orders/client-ops",
    concern="place",
    appends=["orders"],
    writes=["billing/client-ops", "orders/views"],
)
async def place(op: Ping, ctx: Context) -> None:
    """Open the order, ask billing to charge, show the order; a negative amount fails."""
    if op.n < 0:
        raise RuntimeError(f"cannot place an order of {op.n}")
    order = await ctx.load(Account, ctx.object_id)
    ctx.append(order, Opened(owner=op.text))
    ctx.put("billing/client-ops", Ping(n=op.n, text=ctx.object_id), object_id=ctx.object_id)
    ctx.put_view("orders/views", ctx.object_id, {"state": "placed", "amount": op.n})


@APP.handler(Ping, stream="billing/client-ops", concern="charge", appends=["billing"])
async def charge(op: Ping, ctx: Context) -> None:
    """Charge the order's account in billing."""
    account = await ctx.load(Account, ctx.object_id, subsystem="billing")
    ctx.append(account, Deposited(amount=op.n), subsystem="billing")


@APP.handler(Opened, stream="orders/events", concern="project", writes=["orders/views"])
async def project(event: Opened, ctx: Context) -> None:
    """Project opened orders into a second view type."""
    ctx.put_view(
        "orders/views", f"owner-{ctx.object_id}", {"owner": event.owner}, type_name="owner"
    )


PASSWORD = acl.new_password()
ORDERS = SubsystemKeys("orders")
BILLING = SubsystemKeys("billing", 2)
AUDIT = SubsystemKeys("audit")
O0 = ORDERS.partition(0)
CLIENT, BOT, API = "orders-client", "acltest-bot", "acltest-api"
CO = Kind.CLIENT_OPERATIONS
ReadReply = list[tuple[bytes, list[Entry]]]
"""What XREAD/XREADGROUP answer on a client without decode_responses."""


class Users:
    """The app's generated users, created on the server, and clients logged in as them."""

    def __init__(self, backend: Backend, app: App = APP, password: str = PASSWORD) -> None:
        self.url = backend.url or ""
        self.password = password
        self.admin = backend.sync_client()
        self.roles = app_acl.roles(app)
        self._sync: list[redis.Redis] = []
        self._async: list[redis.asyncio.Redis] = []
        for each in self.roles.roles:
            each.apply(self.admin, password)

    def settings(self, user: str) -> Settings:
        """Connection settings of one generated user."""
        return Settings(url=self.url, username=user, password=self.password, retries=0)

    def sync(self, user: str) -> redis.Redis:
        """A sync client logged in as ``user``."""
        client = self.settings(user).client()
        self._sync.append(client)
        return client

    def aio(self, user: str) -> redis.asyncio.Redis:
        """An asyncio client logged in as ``user``."""
        client = self.settings(user).async_client()
        self._async.append(client)
        return client

    def admin_aio(self) -> redis.asyncio.Redis:
        """An asyncio client as the unrestricted default user, to check what users wrote."""
        client = async_client(self.url)
        self._async.append(client)
        return client

    def close(self, run: Callable[[Any], Any]) -> None:
        for client in self._sync:
            client.close()
        for aclient in self._async:
            run(aclient.aclose())
        names = [r.name for r in self.roles.roles]
        self.admin.execute_command("ACL", "DELUSER", *names)  # type: ignore[no-untyped-call]


@pytest.fixture
def users(real: Backend, run: Callable[[Any], Any]) -> Iterator[Users]:
    """The app's users on a flushed real server, deleted afterwards."""
    made = Users(real)
    yield made
    made.close(run)


def refused(exc: BaseException) -> bool:
    """True if the server refused for lack of permission (directly, or inside a script).

    The framework wraps a refused commit into StreamError("commit failed: <server text>").
    """
    text = str(exc)
    return isinstance(exc, NoPermissionError) or any(
        marker in text for marker in ("NOPERM", "No permissions", "ACL failure in script")
    )


# -- framework operations on a sync client, the same path SyncWriteOnlyStream.put takes --------


def put(
    keys: SubsystemKeys,
    kind: Kind,
    *,
    object_id: str = "o-1",
    on_existing: OnExisting = OnExisting.WRITE,
) -> Callable[[redis.Redis], Any]:
    """An action: put a Ping into ``keys``/``kind`` through commit.lua."""

    def action(client: redis.Redis) -> Any:
        envelope = encode(Ping(n=1), object_id=object_id, tags=(("who", "x"),))
        commit = Commit()
        commit.put(keys, kind, envelope, on_existing=on_existing)
        return commit.run_sync(client)

    return action


def script(source: str, *keys: str) -> Callable[[redis.Redis], Any]:
    """An action: load a script and run it over ``keys`` (what a hand-made script could do)."""

    def action(client: redis.Redis) -> Any:
        sha = client.script_load(source)
        return client.evalsha(sha, len(keys), *keys)

    return action


def command(*args: Any) -> Callable[[redis.Redis], Any]:
    """An action: send one raw command."""
    return lambda client: client.execute_command(*args)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Attempt:
    """One forbidden (role, command, key) pair; ``admin`` False for commands too drastic to
    repeat as the default user (FLUSHALL would wipe the scene, CONFIG SET would change it)."""

    user: str
    what: str
    action: Callable[[redis.Redis], Any]
    admin: bool = True


def group_read(stream: str, group: str) -> Callable[[redis.Redis], Any]:
    """An action: read new entries of ``stream`` as a member of consumer group ``group``."""
    return command("XREADGROUP", "GROUP", group, "c", "STREAMS", stream, ">")


def forbidden() -> list[Attempt]:
    """Everything each user must not do, each a command on a key the user can name."""
    ops, views, events = O0.stream(CO), O0.stream(Kind.VIEWS), O0.stream(Kind.EVENTS)
    ops_index, views_index = O0.index(CO), O0.index(Kind.VIEWS)
    sagas, audit_ops = O0.stream(Kind.SAGAS), AUDIT.partition(0).stream(CO)
    status, other_status = O0.handling_status(CO, "place"), O0.handling_status(CO, "other")
    billing_ops, snapshots = BILLING.partition(1).stream(CO), O0.stream(Kind.SNAPSHOTS)
    audit_aggregate = AUDIT.partition(0).aggregate("a")
    read_ops = "return redis.call('XRANGE', KEYS[1], '-', '+')"
    add = "return redis.call('XADD', KEYS[1], '*', 'k', 'v')"
    A, c = Attempt, command  # noqa: N806 - the table below reads better short
    everywhere: list[Attempt] = []
    for user in (CLIENT, API, BOT):
        everywhere += [
            A(user, "KEYS *", c("KEYS", "*")),
            A(user, "SCAN 0", c("SCAN", "0")),
            A(user, "FLUSHALL", c("FLUSHALL"), admin=False),
            A(user, "FLUSHDB", c("FLUSHDB"), admin=False),
            A(user, "CONFIG GET", c("CONFIG", "GET", "maxmemory")),
            A(user, "CONFIG SET", c("CONFIG", "SET", "maxmemory", "1"), admin=False),
            A(user, "ACL LIST", c("ACL", "LIST")),
            A(user, "ACL SETUSER", c("ACL", "SETUSER", user, "+@all"), admin=False),
            A(user, "CLIENT LIST", c("CLIENT", "LIST")),
            A(user, "CLIENT KILL", c("CLIENT", "KILL", "ID", "999999"), admin=False),
            A(user, "SHUTDOWN", c("SHUTDOWN", "NOSAVE"), admin=False),
            A(user, "SCRIPT FLUSH", c("SCRIPT", "FLUSH")),
            A(user, "EVAL XADD views", c("EVAL", add, 1, views)),
            A(user, "DEL client-ops", c("DEL", ops)),
            A(user, "XTRIM client-ops", c("XTRIM", ops, "MAXLEN", "0")),
            A(user, "SET a key of its own", c("SET", f"{O0.tag}:x", "1")),
        ]
    client = [
        A(CLIENT, "XRANGE its client-ops", c("XRANGE", ops, "-", "+")),
        A(CLIENT, "XREVRANGE its client-ops", c("XREVRANGE", ops, "+", "-")),
        A(CLIENT, "XREAD its client-ops", c("XREAD", "STREAMS", ops, "0")),
        A(CLIENT, "XLEN its client-ops", c("XLEN", ops)),
        A(CLIENT, "XINFO STREAM client-ops", c("XINFO", "STREAM", ops)),
        A(CLIENT, "HGET latest index", c("HGET", ops_index, "o")),
        A(CLIENT, "HGETALL latest index", c("HGETALL", ops_index)),
        A(CLIENT, "XADD into latest index", c("XADD", ops_index, "*", "k", "v")),
        A(CLIENT, "XGROUP CREATE client-ops", c("XGROUP", "CREATE", ops, "g", "0")),
        A(CLIENT, "XREADGROUP client-ops", group_read(ops, "place")),
        A(CLIENT, "XDEL client-ops", c("XDEL", ops, "1-1")),
        A(CLIENT, "script XRANGE client-ops", script(read_ops, ops)),
        A(CLIENT, "put SKIP (reads for duplicates)", put(ORDERS, CO, on_existing=OnExisting.SKIP)),
        A(CLIENT, "XADD views", c("XADD", views, "*", "k", "v")),
        A(CLIENT, "XADD events", c("XADD", events, "*", "k", "v")),
        A(CLIENT, "put into views", put(ORDERS, Kind.VIEWS)),
        A(CLIENT, "put into internal-ops", put(ORDERS, Kind.INTERNAL_OPERATIONS)),
        A(CLIENT, "put into billing/client-ops", put(BILLING, CO)),
        A(CLIENT, "XADD billing/client-ops", c("XADD", billing_ops, "*", "k", "v")),
        A(CLIENT, "INCR billing seq", c("INCRBY", BILLING.partition(0).sequence(CO), 1)),
        A(CLIENT, "INCR views seq", c("INCRBY", O0.sequence(Kind.VIEWS), 1)),
        A(CLIENT, "HSET handling status", c("HSET", status, "r", "Completed")),
        A(CLIENT, "XRANGE views", c("XRANGE", views, "-", "+")),
    ]  # fmt: skip
    api = [
        A(API, "XADD views", c("XADD", views, "*", "k", "v")),
        A(API, "put into views", put(ORDERS, Kind.VIEWS)),
        A(API, "HSET views latest index", c("HSET", views_index, "o", "1-1")),
        A(API, "ZADD views tag index", c("ZADD", O0.tag_index(Kind.VIEWS, "who", "x"), 1, "1-1")),
        A(API, "XDEL views", c("XDEL", views, "1-1")),
        A(API, "DEL views", c("DEL", views)),
        A(API, "XTRIM views", c("XTRIM", views, "MAXLEN", "0")),
        A(API, "XADD events", c("XADD", events, "*", "k", "v")),
        A(API, "script XADD views", script(add, views)),
        A(API, "XRANGE client-ops", c("XRANGE", ops, "-", "+")),
        A(API, "XRANGE snapshots", c("XRANGE", snapshots, "-", "+")),
        A(API, "LRANGE an aggregate", c("LRANGE", O0.aggregate("o-1"), 0, -1)),
        A(API, "LLEN an aggregate", c("LLEN", O0.aggregate("o-1"))),
        A(API, "XGROUP CREATE views", c("XGROUP", "CREATE", views, "new", "0")),
        A(API, "XREADGROUP views", group_read(views, "g")),
        A(API, "put into client-ops", put(ORDERS, CO)),
        A(API, "INCR client-ops seq", c("INCRBY", O0.sequence(CO), 1)),
        A(API, "HGETALL handling status", c("HGETALL", status)),
    ]  # fmt: skip
    bot = [
        A(BOT, "XADD orders/sagas (undeclared)", c("XADD", sagas, "*", "k", "v")),
        A(BOT, "put into orders/sagas (undeclared)", put(ORDERS, Kind.SAGAS)),
        A(BOT, "put into orders/internal-ops (undeclared)", put(ORDERS, Kind.INTERNAL_OPERATIONS)),
        A(BOT, "put into billing/views (undeclared)", put(BILLING, Kind.VIEWS)),
        A(BOT, "put into audit/client-ops (undeclared)", put(AUDIT, CO)),
        A(BOT, "XADD orders/snapshots (undeclared)", c("XADD", snapshots, "*", "k", "v")),
        A(BOT, "RPUSH audit aggregate (undeclared)", c("RPUSH", audit_aggregate, "e")),
        A(BOT, "XDEL its input", c("XDEL", ops, "1-1")),
        A(BOT, "XTRIM its input", c("XTRIM", ops, "MAXLEN", "0")),
        A(BOT, "XGROUP DESTROY its input's group", c("XGROUP", "DESTROY", ops, "place")),
        A(BOT, "XGROUP SETID its input's group", c("XGROUP", "SETID", ops, "place", "$")),
        A(BOT, "HSET disable switch", c("HSET", O0.handling_flags(CO), "place", "1")),
        A(BOT, "HSET another concern's status", c("HSET", other_status, "r", "x")),
        A(BOT, "XREADGROUP audit/client-ops (not its input)", group_read(audit_ops, "g")),
        A(BOT, "XRANGE orders/sagas (not declared)", c("XRANGE", sagas, "-", "+")),
        A(BOT, "script XADD orders/sagas", script(add, sagas)),
        A(BOT, "INCR orders/sagas seq", c("INCRBY", O0.sequence(Kind.SAGAS), 1)),
        A(BOT, "XADD into views index", c("XADD", views_index, "*", "k", "v")),
    ]  # fmt: skip
    return everywhere + client + api + bot


def scene(admin: redis.Redis) -> None:
    """The keys the attempts name, as a running app would have them (idempotent)."""
    # Attempts XADD into index keys to show they cannot; the default user's repeat succeeds
    # and would leave a stream where a hash belongs.
    admin.delete(O0.index(Kind.CLIENT_OPERATIONS), O0.index(Kind.VIEWS))
    for key, group in (
        (O0.stream(Kind.CLIENT_OPERATIONS), "place"),
        (O0.stream(Kind.VIEWS), "g"),
        (AUDIT.partition(0).stream(Kind.CLIENT_OPERATIONS), "g"),
    ):
        admin.xadd(key, {"k": "v"})
        try:
            admin.xgroup_create(key, group, "0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def test_every_forbidden_pair_is_refused_by_the_server(
    users: Users, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each user is refused everything outside its declared part, and the default user is
    not: the refusal comes from the ACL, not from a wrong key or type."""
    attempts = forbidden()
    allowed: list[str] = []
    not_acl: list[str] = []
    clients = {name: users.sync(name) for name in (CLIENT, API, BOT)}
    admin_failed: list[str] = []
    for attempt in attempts:
        scene(users.admin)
        try:
            attempt.action(clients[attempt.user])
        except (ResponseError, StreamError) as exc:
            if not refused(exc):
                not_acl.append(f"{attempt.user}: {attempt.what}: {exc}")
        else:
            allowed.append(f"{attempt.user}: {attempt.what}")
        if attempt.admin:
            scene(users.admin)
            try:
                attempt.action(users.admin)
            except (ResponseError, StreamError) as exc:
                admin_failed.append(f"{attempt.what}: {exc}")
    # An attempt that fails for the default user too would prove nothing.
    assert [] == admin_failed, "\n".join(admin_failed)
    refused_count = len(attempts) - len(allowed) - len(not_acl)
    with capsys.disabled():
        print(
            f"\nACL: {len(attempts)} forbidden (role, command, key) pairs tried, "
            f"{refused_count} refused by the server"
        )
    assert ([], []) == (allowed, not_acl)
    assert len(attempts) == refused_count


def test_generated_users_are_what_the_server_stores(users: Users) -> None:
    """The server holds each generated user with its selectors, and a wrong password fails."""
    names = {r.name for r in users.roles.roles}
    assert {"orders-client", "billing-client", BOT, API} == names
    listed = [as_str(line) for line in users.admin.execute_command("ACL", "LIST")]  # type: ignore[no-untyped-call]
    for name in names:
        (line,) = [each for each in listed if each.startswith(f"user {name} ")]
        assert "+@all" not in line
        assert "~*" not in line.split()
    with pytest.raises(redis.AuthenticationError):
        Settings(url=users.url, username=CLIENT, password="wrong", retries=0).client().ping()


def test_client_puts_and_takes_ids_as_its_user(users: Users, run: Callable[[Any], Any]) -> None:
    """A client user puts operations (sync, async, delayed, any partition) and gets ids."""
    orders = Subsystem("orders", users.aio(CLIENT), sync_client=users.sync(CLIENT))
    billing = Subsystem("billing", users.aio("billing-client"), partitions=2)

    async def scenario() -> list[int]:
        ops = orders.writer("client-ops")
        first, second = await ops.next_id(), await ops.next_id()
        await ops.put(Ping(n=1), object_id=first, tags={"who": "ann"})
        await ops.put(Ping(n=9), object_id=second, execute_earliest=10**13)
        sync_ops = orders.sync_writer("client-ops")
        sync_ops.put(Ping(n=2), object_id=sync_ops.next_id())
        for n in range(8):
            await billing.writer("client-ops").put(Ping(n=n), object_id=f"bill-{n}")
        return [first, second]

    assert [1, 2] == run(scenario())
    admin = Subsystem("orders", users.admin_aio())
    stored = run(admin.reader("client-ops").read())
    assert [Ping(n=1), Ping(n=2)] == [r.message for r in stored]
    assert 1 == users.admin.zcard(O0.delayed(Kind.CLIENT_OPERATIONS))
    per_partition = [
        users.admin.xlen(BILLING.partition(p).stream(Kind.CLIENT_OPERATIONS)) for p in (0, 1)
    ]
    assert 8 == sum(per_partition)
    assert all(count > 0 for count in per_partition)


def test_api_reads_views_and_events_as_its_user(users: Users, run: Callable[[Any], Any]) -> None:
    """The API user reads the latest view raw, by tag, by time and live, and the events; and
    it can heal an index whose record was trimmed (the one write a reader makes)."""
    admin = Subsystem("orders", users.admin_aio())
    api = Subsystem("orders", users.aio(API))
    events = admin.aggregates(Account)

    async def scenario() -> tuple[Any, ...]:
        await admin.writer("views").put_view("o-1", {"total": 1}, tags={"who": "ann"})
        await admin.writer("views").put_view("o-1", {"total": 2}, tags={"who": "ann"})
        await events.append("o-1", [Opened(owner="ann")], expected_version=0, tags={"who": "ann"})
        views, stream = api.reader("views"), api.reader("events")
        raw = await views.latest_raw("o-1")
        tagged = [r.envelope.payload for r in await views.by_tag("who", "ann")]
        opened = [r.message for r in await stream.read()]
        live = [r.message async for r in stream.subscribe(after="0", idle_limit=1, block_ms=10)]
        by_tag = len(await stream.by_tag("who", "ann"))
        length = await views.length()
        await admin.trim("views", maxlen=0)
        healed = (await views.latest("o-1"), await views.by_tag("who", "ann"))
        return raw, tagged, opened, live, by_tag, length, healed

    raw, tagged, opened, live, by_tag, length, healed = run(scenario())
    assert b'{"total":2}' == raw
    assert [b'{"total":2}'] == tagged
    assert [Opened(owner="ann")] == opened == live
    assert (1, 1) == (by_tag, length)
    assert (None, []) == healed
    assert 0 == users.admin.hlen(O0.index(Kind.VIEWS))


def test_bot_consumes_and_commits_declared_outputs_as_its_user(
    users: Users, run: Callable[[Any], Any]
) -> None:
    """The bot user joins its input's group, reads, loads the aggregate, and commits what
    its handler declared (append, put to billing, view) with the status and the ack."""
    spec = next(s for s in APP.handlers if s.concern == "place")
    bot = users.aio(BOT)
    ops = O0.stream(CO)
    client = Subsystem("orders", users.aio(CLIENT)).writer("client-ops")
    admin = users.admin_aio()

    async def scenario() -> tuple[Any, ...]:
        await bot.xgroup_create(ops, "place", id="0", mkstream=True)
        await client.put(Ping(n=5), object_id="o-1")
        ((_, found),) = cast(
            ReadReply, await bot.xreadgroup("place", "worker", {ops: ">"}, count=10)
        )
        ((raw_id, raw),) = found
        entry_id = as_str(raw_id)
        envelope = parse(ops, entry_id, raw)
        ctx = Context(
            spec,
            envelope,
            entry_id=entry_id,
            attempt=1,
            client=bot,
            keys_of={"orders": ORDERS, "billing": BILLING},
            types=registry,
        )
        account = await ctx.load(Account, "o-1")
        ctx.append(account, Opened(owner="ann"), Deposited(amount=5))
        ctx.put("billing/client-ops", Ping(n=6), object_id="bill-o-1", on_existing=OnExisting.SKIP)
        ctx.put_view("orders/views", "o-1", {"state": "placed"})
        record = envelope.message_id
        # On a cluster, as a bot does: billing's put goes through the outbox, and the bot
        # user's relay forwards it (its grants cover that too).
        home = O0 if is_cluster(bot) else None
        commit = Commit(Input(O0, CO, "place", "worker", entry_id, record, raw, envelope),
                        home=home)  # fmt: skip
        ctx.fill(commit)
        commit.settle(Action.COMPLETE, actor="worker")
        await commit.run(bot)
        if home is not None:
            assert 1 == (await outbox.drain(bot, [home])).forwarded
        pending = await bot.xpending(ops, "place")
        loaded = await AggregateStore(ORDERS, Account, bot).load("o-1")
        billed = await Subsystem("billing", admin, partitions=2).reader("client-ops").read()
        view = await Subsystem("orders", admin).reader("views").latest_raw("o-1")
        status = decode_stored(await admin.hget(O0.handling_status(CO, "place"), record))[0]
        return pending["pending"], loaded, [r.message for r in billed], view, status

    pending, loaded, billed, view, status = run(scenario())
    assert 0 == pending
    assert (2, "ann", 5) == (loaded.version, loaded.owner, loaded.balance)
    assert [Ping(n=6)] == billed
    assert b'{"state":"placed"}' == view
    assert Status.COMPLETED == status


def test_bot_looks_up_statuses_and_switches_of_its_input_as_its_user(users: Users) -> None:
    """Before running handlers a bot reads its records' statuses and the stream and record
    switches of its input (HMGET): the bot user may, and may not write the switches."""
    bot = users.sync(BOT)
    flags = O0.handling_flags(CO)
    assert [None] == bot.hmget(O0.handling_status(CO, "place"), ["m-1"])
    assert [None, None] == bot.hmget(flags, [O0.stream_switch("place"), "m-1"])
    with pytest.raises(NoPermissionError):
        bot.hset(flags, "m-1", "DisabledForRecord")


def test_bot_commit_with_an_undeclared_output_is_refused_whole(
    users: Users, run: Callable[[Any], Any]
) -> None:
    """One undeclared output makes the server refuse the whole commit: nothing is written,
    the input is not acked and stays pending for a retry."""
    bot = users.aio(BOT)
    ops = O0.stream(CO)

    async def scenario() -> tuple[Any, ...]:
        await bot.xgroup_create(ops, "place", id="0", mkstream=True)
        await Subsystem("orders", users.aio(CLIENT)).writer("client-ops").put(Ping(n=1))
        ((_, found),) = cast(
            ReadReply, await bot.xreadgroup("place", "worker", {ops: ">"}, count=10)
        )
        entry_id = as_str(found[0][0])
        commit = Commit(Input(O0, CO, "place", "worker", entry_id, "m", {}))
        commit.put_at(BILLING.partition(0), CO, encode(Ping(n=2), object_id="b"))
        commit.put_at(O0, Kind.SAGAS, encode(Ping(n=3), object_id="s"))  # not declared
        with pytest.raises(PermissionDenied) as refusal:
            await commit.run(bot)
        pending = await bot.xpending(ops, "place")
        return refusal.value, pending["pending"]

    refusal, pending = run(scenario())
    assert refused(refusal)
    assert 1 == pending
    written = [
        users.admin.exists(k) for k in (BILLING.partition(0).stream(CO), O0.stream(Kind.SAGAS))
    ]
    assert [0, 0] == written


def test_bot_moves_delayed_entries_and_dead_letters_as_its_user(
    users: Users, run: Callable[[Any], Any]
) -> None:
    """The consumer of a stream moves its due delayed entries into it, and puts bad input
    into the dead-letter stream of its input's subsystem."""
    bot = users.aio(BOT)
    delayed_set = O0.delayed(CO)
    parked = Delayed(CO.value, encode(Ping(n=7), object_id="later"))
    users.admin.zadd(delayed_set, {parked.pack(): 1})

    async def scenario() -> None:
        (member,) = cast(list[bytes], await bot.zrangebyscore(delayed_set, 0, 10))
        commit = Commit()
        commit.move_due(O0, CO, member)
        commit.put_at(O0, Kind.DEAD_LETTERS, encode(Ping(n=8), object_id="junk"))
        await commit.run(bot)

    run(scenario())
    assert 0 == users.admin.zcard(delayed_set)
    assert 1 == users.admin.xlen(O0.stream(CO))
    assert 1 == users.admin.xlen(O0.stream(Kind.DEAD_LETTERS))


ROOT = Path(__file__).resolve().parents[1]


def test_a_real_bot_process_runs_as_its_acl_user(
    users: Users, run: Callable[[Any], Any], tmp_path: Path
) -> None:
    """``streamcqrs run``, logged in as the generated bot user, takes a client's order
    through every declared step (aggregate, billing operation, billing aggregate, views) and
    dead-letters a failing one, and the server refuses none of what it does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env |= {"REDIS_USERNAME": BOT, "REDIS_PASSWORD": PASSWORD}
    log = tmp_path / "bot.log"
    args = [
        sys.executable, "-m", "streamcqrs", "run", "tests.test_acl:APP", "--url", users.url,
        "--max-attempts", "1", "--block-ms", "100", "--log-level", "debug", "--grace", "5",
    ]  # fmt: skip
    orders = Subsystem("orders", users.aio(CLIENT)).writer("client-ops")
    billing_events = [BILLING.partition(p).stream(Kind.EVENTS) for p in (0, 1)]
    dead = O0.stream(Kind.DEAD_LETTERS)
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            run(orders.put(Ping(n=5, text="ann"), object_id="o-1"))
            run(orders.put(Ping(n=-1, text="bob"), object_id="o-bad"))
            wait_until(
                users.admin,
                lambda: (
                    sum(users.admin.xlen(k) for k in billing_events) == 1
                    and users.admin.xlen(dead) == 1
                    and users.admin.xlen(O0.stream(Kind.VIEWS)) == 2
                ),
                [*billing_events, dead, O0.stream(Kind.VIEWS)],
                what="the bot to handle both orders",
                log=log,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
    text = log.read_text()
    assert [] == refused_lines(text)
    assert 0 == proc.returncode, text[-2000:]
    admin = users.admin_aio()
    billed = run(AggregateStore(BILLING, Account, admin).load("o-1"))
    order = run(AggregateStore(ORDERS, Account, admin).load("o-1"))
    assert (1, 5) == (billed.version, billed.balance)
    assert (1, "ann") == (order.version, order.owner)
    views = {r.envelope.type: r.raw for r in run(Subsystem("orders", admin).reader("views").read())}
    assert {"view": b'{"state":"placed","amount":5}', "owner": b'{"owner":"ann"}'} == views
    (letter,) = read_dead_letters_sync(users.admin, ORDERS)
    assert ("o-bad", "place") == (letter.letter.raw[b"obj"].decode(), letter.letter.concern)


def wait_until(
    admin: redis.Redis,
    done: Callable[[], bool],
    streams: list[str],
    *,
    what: str,
    log: Path,
    timeout: float = 30.0,
) -> None:
    """Wait until ``done()``, waking whenever one of ``streams`` gets an entry (bounded)."""
    deadline = time.monotonic() + timeout
    cursors: dict[Any, Any] = {key: "$" for key in streams}
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"waited {timeout}s for {what}; bot log:\n{log.read_text()[-3000:]}"
            )
        if is_cluster(admin):  # one XREAD may not name keys of several slots: look again
            time.sleep(0.05)
            continue
        reply = cast(ReadReply, admin.xread(cursors, block=200))
        for key, found in reply or []:
            cursors[key] = found[-1][0]
