"""The generated ACL users of an app with deferred work, enforced by a real server.

``APP`` uses every deferred feature: a handler submits a ticket in its commit, an outside
service submits one with ``Tickets`` (the ``work-tickets`` user) and reads its receipt, the
ticket work and a handler hold exclusive leases, a 1 s schedule puts ticks, and retention
forgets done statuses, trims a stream and compacts an aggregate behind its snapshots (the
``aclwork-cleaner`` user, which bots log in as with ``--cleaner-user``).

A real ``streamcqrs run`` logged in as the generated bot user does all of it with nothing
refused; every forbidden (role, command, key) attempt is refused, and repeated as the
default user, where it must succeed, so a refusal is known to come from the ACL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.exceptions import NoPermissionError, ResponseError

from streamcqrs.bots.cleaner import Cleaner
from streamcqrs.domain import Aggregate, Event, Operation, message
from streamcqrs.handlers import App, Context
from streamcqrs.handlers import acl as app_acl
from streamcqrs.handlers.tickets import Receipt, Tickets
from streamcqrs.streams import Commit, Kind, OnExisting, Settings, Subsystem, SubsystemKeys, acl
from streamcqrs.streams.envelope import encode
from streamcqrs.streams.errors import StreamError
from streamcqrs.streams.keys import cleaner_lease, cleaner_state
from streamcqrs.streams.leases import Lease
from streamcqrs.streams.scripts import script as framework_script
from tests.support import Backend, refused_lines
from tests.test_acl import Attempt, Users, command, group_read, put, refused, script

# -- the app -------------------------------------------------------------------------------


@message("aclwork.Open")
class Open(Operation):
    """Open an account; with ``submit`` also submit a ``touch`` ticket in the same commit."""

    submit: bool = False


@message("aclwork.Opened")
class Opened(Event):
    """The account exists."""


@message("aclwork.Touched")
class Touched(Event):
    """A ticket's ``touch`` ran."""


@message("aclwork.Count")
class Count(Operation):
    """Take the next counter value (exclusive)."""


@message("aclwork.Counted")
class Counted(Event):
    """The counter handed out ``value``."""

    value: int


@message("aclwork.Tick")
class Tick(Operation):
    """What the schedule puts every second."""


@message("aclwork.Ticked")
class Ticked(Event):
    """A tick was handled."""


class Account(Aggregate):
    """An account and how often tickets touched it."""

    touched: int = 0

    def apply(self, event: Event) -> None:
        """Fold one event."""
        if isinstance(event, Touched):
            self.touched += 1


class Counter(Aggregate):
    """The exclusive counter."""

    value: int = 0

    def apply(self, event: Event) -> None:
        """Fold one event."""
        if isinstance(event, Counted):
            self.value = event.value


class Ticks(Aggregate):
    """Counts handled ticks (the version)."""

    def apply(self, event: Event) -> None:
        """Nothing to fold."""


APP = App("aclwork")
APP.subsystem("work", partitions=2)
APP.tickets("work")
APP.every(1.0, Tick(), stream="clock/internal-ops", name="tick")
APP.retention("work/client-ops", keep_done_for=0.2, max_age=0.2)
APP.retention("clock/snapshots", compact_aggregates=True)
APP.cleaner(every=0.5, lease_ttl=2.0, batch=100)


@APP.handler(Open, stream="work/client-ops", concern="open", appends=["work"],
             writes=["work/internal-ops"])  # fmt: skip
async def open_account(op: Open, ctx: Context) -> None:
    """Open the account; submit a touch ticket, due a little later, if asked."""
    account = await ctx.load(Account, ctx.object_id)
    ctx.append(account, Opened())
    if op.submit:
        ctx.submit(root=(Account, account.id), work="Account.touch", delay=0.2)


@APP.method(Account, subsystem="work", exclusive="work-touch")
async def touch(account: Account, ctx: Context) -> None:
    """Record that a ticket ran (holding the work-touch lease)."""
    ctx.append(account, Touched())


@APP.handler(Count, stream="work/client-ops", concern="count", appends=["work"],
             exclusive="work-counter")  # fmt: skip
async def count(op: Count, ctx: Context) -> None:
    """Take the next counter value, one handler at a time."""
    counter = await ctx.load(Counter, "counter")
    ctx.append(counter, Counted(value=counter.value + 1))


@APP.handler(Tick, stream="clock/internal-ops", appends=["clock"], writes=["clock/snapshots"])
async def on_tick(op: Tick, ctx: Context) -> None:
    """Count the tick and snapshot the count (so the cleaner can compact behind it)."""
    ticks = await ctx.load(Ticks, "ticks")
    ctx.append(ticks, Ticked())
    ctx.snapshot(ticks)


# -- users ---------------------------------------------------------------------------------

PASSWORD = acl.new_password()
WORK = SubsystemKeys("work", 2)
CLOCK = SubsystemKeys("clock")
AUDIT = SubsystemKeys("audit")
W0, C0, A0 = WORK.partition(0), CLOCK.partition(0), AUDIT.partition(0)
BOT, CLEANER, TICKETS, CLIENT = "aclwork-bot", "aclwork-cleaner", "work-tickets", "work-client"
CO, IO = Kind.CLIENT_OPERATIONS, Kind.INTERNAL_OPERATIONS
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def users(real: Backend, run: Callable[[Any], Any]) -> Iterator[Users]:
    """The app's users on a flushed real server, deleted afterwards."""
    made = Users(real, APP, PASSWORD)
    yield made
    made.close(run)


def test_deferred_work_adds_a_ticket_submitter_and_a_cleaner_user(users: Users) -> None:
    """An app that executes tickets and declares retention gets a ticket submitter per
    ticket subsystem and a cleaner apart from its bot; each says what it is for."""
    names = [r.name for r in users.roles.roles]
    assert [CLIENT, TICKETS, BOT, CLEANER, "aclwork-api"] == names
    why = {r.name: r.why for r in users.roles.roles}
    assert "trusted services only" in why[TICKETS]
    assert "may not trim or forget" in why[CLEANER]
    assert app_acl.cleaner(App("plain")) is None


# -- forbidden ---------------------------------------------------------------------------


def lease_script(key: str) -> Callable[[redis.Redis], Any]:
    """An action: take the lease at ``key`` through lease.lua, as a bot would."""
    lease = framework_script("lease")
    return lambda client: lease.run_sync(client, [key], ["take", "intruder", 10_000])


def forbidden() -> list[Attempt]:
    """What each deferred-work user must not do, each on a key it can name."""
    A, c = Attempt, command  # noqa: N806 - the table below reads better short
    ops, internal = W0.stream(CO), W0.stream(IO)
    status = W0.handling_status(CO, "open")
    ticks = C0.aggregate("ticks")
    bot = [
        A(BOT, "XTRIM its input (the cleaner's)", c("XTRIM", ops, "MAXLEN", "0")),
        A(BOT, "HDEL its own status (the cleaner's)", c("HDEL", status, "r")),
        A(BOT, "HSCAN its own status", c("HSCAN", status, 0)),
        A(BOT, "LTRIM an aggregate (compaction)", c("LTRIM", ticks, 1, -1)),
        A(BOT, "HSET cleaned notes", c("HSET", W0.cleaned(CO), "done:open", "1")),
        A(BOT, "HSET the cleaner's state", c("HSET", cleaner_state("aclwork"), "finished", 1)),
        A(BOT, "take the cleaner's lease", lease_script(cleaner_lease("aclwork"))),
        A(BOT, "SET the cleaner's lease", c("SET", cleaner_lease("aclwork"), "me")),
        A(BOT, "take an undeclared lease", lease_script(W0.lease("other"))),
        A(BOT, "SET another subsystem's lease", c("SET", A0.lease("work-counter"), "me")),
        A(BOT, "take audit's lease", lease_script(A0.lease("work-counter"))),
        A(BOT, "HSET audit's receipt", c("HSET", A0.receipt("t"), "done", 1)),
        A(BOT, "HGETALL its receipts", c("HGETALL", W0.receipt("t"))),
        A(BOT, "HSET audit's schedules", c("HSET", A0.schedules, "tick", 1)),
        A(BOT, "HSET work's schedules (undeclared)", c("HSET", W0.schedules, "tick", 1)),
        A(BOT, "ZRANGEBYSCORE audit's delayed set", c("ZRANGEBYSCORE", A0.delayed(IO), 0, 1)),
        A(BOT, "put into audit/internal-ops", put(AUDIT, IO)),
        A(BOT, "script over the cleaner's state", script("return 1", cleaner_state("aclwork"))),
    ]  # fmt: skip
    cleaner = [
        A(CLEANER, "XADD its stream", c("XADD", ops, "*", "k", "v")),
        A(CLEANER, "put into its stream", put(WORK, CO)),
        A(CLEANER, "XREADGROUP its stream", group_read(ops, "open")),
        A(CLEANER, "XACK its stream", c("XACK", ops, "open", "1-1")),
        A(CLEANER, "XDEL its stream", c("XDEL", ops, "1-1")),
        A(CLEANER, "DEL its stream", c("DEL", ops)),
        A(CLEANER, "HSET a status", c("HSET", status, "r", "Completed")),
        A(CLEANER, "XTRIM a stream without policy", c("XTRIM", internal, "MAXLEN", "0")),
        A(CLEANER, "XTRIM audit", c("XTRIM", A0.stream(CO), "MAXLEN", "0")),
        A(CLEANER, "HDEL audit's status", c("HDEL", A0.handling_status(CO, "g"), "r")),
        A(CLEANER, "LTRIM work's aggregate (no compaction)", c("LTRIM", W0.aggregate("a"), 1, -1)),
        A(CLEANER, "LPUSH audit's aggregate", c("LPUSH", A0.aggregate("a"), "H1")),
        A(CLEANER, "RPUSH an event", c("RPUSH", ticks, "e")),
        A(CLEANER, "SET a bot's lease", c("SET", W0.lease("work-counter"), "me")),
        A(CLEANER, "take another app's cleaner lease", lease_script(cleaner_lease("other"))),
        A(CLEANER, "HSET a receipt", c("HSET", W0.receipt("t"), "done", 1)),
        A(CLEANER, "HSET schedules", c("HSET", C0.schedules, "tick", 1)),
    ]  # fmt: skip
    tickets = [
        A(TICKETS, "XRANGE work/internal-ops", c("XRANGE", internal, "-", "+")),
        A(TICKETS, "XREADGROUP work/internal-ops", group_read(internal, "tickets")),
        A(TICKETS, "put SKIP (reads the stream)", put(WORK, IO, on_existing=OnExisting.SKIP)),
        A(TICKETS, "XADD work/client-ops", c("XADD", ops, "*", "k", "v")),
        A(TICKETS, "put into audit/internal-ops", put(AUDIT, IO)),
        A(TICKETS, "HSET the executor's status", c("HSET", W0.handling_status(IO, "tickets"),
                                                  "t", "Completed")),
        A(TICKETS, "HGET another concern's status", c("HGET", W0.handling_status(IO, "x"), "t")),
        A(TICKETS, "HGETALL audit's receipt", c("HGETALL", A0.receipt("t"))),
        A(TICKETS, "DEL a receipt", c("DEL", W0.receipt("t"))),
        A(TICKETS, "PEXPIREAT a receipt", c("PEXPIREAT", W0.receipt("t"), 1)),
        A(TICKETS, "ZRANGEBYSCORE the delayed set", c("ZRANGEBYSCORE", W0.delayed(IO), 0, 1)),
        A(TICKETS, "take a lease", lease_script(W0.lease("work-touch"))),
        A(TICKETS, "LRANGE an aggregate", c("LRANGE", W0.aggregate("a"), 0, -1)),
    ]  # fmt: skip
    return bot + cleaner + tickets


def scene(admin: redis.Redis) -> None:
    """The keys the attempts name, as a running app would have them (idempotent)."""
    for key, group in ((W0.stream(CO), "open"), (W0.stream(IO), "tickets")):
        admin.xadd(key, {"k": "v"})
        try:
            admin.xgroup_create(key, group, "0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    admin.delete(cleaner_lease("aclwork"), cleaner_lease("other"), W0.lease("other"),
                 A0.lease("work-counter"), W0.lease("work-touch"))  # fmt: skip


def test_every_forbidden_deferred_pair_is_refused_by_the_server(users: Users) -> None:
    """The bot may not clean, nor touch another subsystem's leases, receipts, schedules or
    delayed sets; the cleaner may only remove what its policies name; the ticket submitter
    may only put tickets and read receipts. The default user may do each."""
    attempts = forbidden()
    clients = {name: users.sync(name) for name in (BOT, CLEANER, TICKETS)}
    allowed, not_acl, admin_failed = [], [], []
    for attempt in attempts:
        scene(users.admin)
        try:
            attempt.action(clients[attempt.user])
        except (ResponseError, StreamError) as exc:
            if not refused(exc):
                not_acl.append(f"{attempt.user}: {attempt.what}: {exc}")
        else:
            allowed.append(f"{attempt.user}: {attempt.what}")
        scene(users.admin)
        try:
            attempt.action(users.admin)
        except (ResponseError, StreamError) as exc:
            admin_failed.append(f"{attempt.what}: {exc}")
    assert [] == admin_failed, "\n".join(admin_failed)
    assert ([], []) == (allowed, not_acl)


# -- allowed: one bot process as the bot user does all the deferred work ---------------------


def test_a_bot_process_does_deferred_work_as_its_acl_users(
    users: Users, run: Callable[[Any], Any], tmp_path: Path
) -> None:
    """``streamcqrs run`` as the bot user (its cleaner as the cleaner user) runs a ticket
    submitted by a handler and one submitted by an outside service to their receipts, an
    exclusive handler, a 1 s schedule and cleaner cycles (done statuses forgotten, the
    stream trimmed, the aggregate compacted), and the server refuses none of it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "STREAMCQRS_"))}
    env |= {"REDIS_USERNAME": BOT, "REDIS_PASSWORD": PASSWORD,
            "STREAMCQRS_CLEANER_PASSWORD": PASSWORD}  # fmt: skip
    log = tmp_path / "bot.log"
    args = [
        sys.executable, "-m", "streamcqrs", "run", "tests.test_acl_deferred:APP",
        "--url", users.url, "--cleaner-user", CLEANER, "--max-attempts", "1",
        "--block-ms", "100", "--log-level", "info", "--grace", "5",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            receipts = run(_scenario(users, log))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
    text = log.read_text()
    assert [] == refused_lines(text)
    assert [] == [line for line in text.splitlines() if '"level": "error"' in line]
    assert 0 == proc.returncode, text[-2000:]
    assert [("", True), ("", True)] == [(r.error, r.done) for r in receipts]
    admin = users.admin
    assert b"H" == admin.lindex(C0.aggregate("ticks"), 0)[:1], "ticks were not compacted"
    assert admin.hexists(C0.cleaned(Kind.SNAPSHOTS), "compacted_through")
    assert admin.hexists(WORK.for_object("a-1").cleaned(CO), "trimmed_before")
    counter = [admin.llen(p.aggregate("counter")) for p in WORK.all()]
    assert 3 == sum(counter)


async def _scenario(users: Users, log: Path) -> list[Receipt]:
    """Open two accounts (one submitting a ticket in its handler), submit a ticket from
    outside, count three times, and wait for receipts, ticks and the cleaner's work."""
    client = Subsystem("work", users.settings(CLIENT).async_client(), partitions=2)
    service = Subsystem("work", users.settings(TICKETS).async_client(), partitions=2)
    admin = redis.asyncio.Redis.from_url(users.url)
    tickets = Tickets(service)
    try:
        ops = client.writer("client-ops")
        await ops.put(Open(submit=True), object_id="a-1")
        await ops.put(Open(), object_id="a-2")
        for _ in range(3):
            await ops.put(Count(), object_id="counter")
        store = Subsystem("work", admin, partitions=2).aggregates(Account)
        await _until(lambda: _version(store, "a-2", 1), "account a-2 opened", log)
        outside = await tickets.submit(root=(Account, "a-2"), work="Account.touch", delay=0.2)
        inside = await _ticket_of(admin, "a-1", log)
        done: dict[str, Receipt] = {}

        async def receipts_done() -> bool:
            for ticket in (inside, outside):
                receipt = await tickets.receipt(ticket)
                if receipt is not None and receipt.done:
                    done[ticket] = receipt
            return len(done) == 2

        await _until(receipts_done, "both tickets' receipts", log)
        await _until(lambda: _version(store, "a-1", 2), "a-1 touched", log)
        ticks = Subsystem("clock", admin).aggregates(Ticks)
        await _until(lambda: _version(ticks, "ticks", 2), "two scheduled ticks", log)
        await _until(lambda: _cleaned(admin), "a cleaner cycle over the handled work", log)
        return [done[inside], done[outside]]
    finally:
        for each in (client.client, service.client, admin):
            await each.aclose()


async def _version(store: Any, aggregate_id: str, at_least: int) -> bool:
    return int(await store.version(aggregate_id)) >= at_least


async def _ticket_of(admin: redis.asyncio.Redis, root: str, log: Path) -> str:
    """The id of the ticket a handler submitted for ``root`` (read from its receipt key)."""
    found: list[str] = []

    async def submitted() -> bool:
        for part in WORK.all():
            async for key in admin.scan_iter(match=acl.wildcard(part.receipt)):
                if (await admin.hget(key, "root")) == f"Account/{root}".encode():
                    found.append(key.decode().rsplit(":", 1)[1])
        return bool(found)

    await _until(submitted, f"the ticket submitted for {root}", log)
    return found[0]


async def _cleaned(admin: redis.asyncio.Redis) -> bool:
    """True once done statuses of work/client-ops were forgotten, the stream trimmed and the
    ticks aggregate compacted."""
    statuses = [await admin.hlen(p.handling_status(CO, c)) for p in WORK.all()
                for c in ("open", "count")]  # fmt: skip
    lengths = [await admin.xlen(p.stream(CO)) for p in WORK.all()]
    head = await admin.lindex(C0.aggregate("ticks"), 0)
    return sum(statuses) == 0 and sum(lengths) == 0 and bool(head) and head[:1] == b"H"


async def _until(check: Callable[[], Any], what: str, log: Path, within: float = 30.0) -> None:
    """Await ``check()`` every 50 ms until it holds; fail with the bot's log after ``within``."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            text = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"waited {within} s for {what}; bot log:\n{text[-3000:]}")
        await asyncio.sleep(0.05)


# -- the cleaner on the command line, and a bot whose user may not clean ---------------------


def test_streamcqrs_clean_runs_as_the_cleaner_user_and_names_it_to_the_bot_user(
    users: Users,
) -> None:
    """``streamcqrs clean --username aclwork-cleaner`` runs a cycle; as the bot user it is
    refused with one line naming the user to log in as."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env["REDIS_PASSWORD"] = PASSWORD
    base = [sys.executable, "-m", "streamcqrs", "clean", "tests.test_acl_deferred:APP",
            "--url", users.url, "--wait", "5", "--username"]  # fmt: skip
    ok = subprocess.run([*base, CLEANER], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=60, check=False)  # fmt: skip
    as_bot = subprocess.run([*base, BOT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert (0, "") == (ok.returncode, ok.stderr)
    assert ok.stdout.startswith("cleaned aclwork: ")
    assert 2 == as_bot.returncode
    assert "log in as aclwork-cleaner" in as_bot.stderr
    assert "Traceback" not in as_bot.stderr


class Recorder:
    """A logger that keeps what it was told (the cleaner's log is what is asserted on)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []
        self.told = asyncio.Event()

    def _log(self, level: str) -> Callable[..., None]:
        def record(event: str, **fields: Any) -> None:
            self.lines.append((level, event, fields))
            self.told.set()

        return record

    def __getattr__(self, level: str) -> Callable[..., None]:
        return self._log(level)


def test_a_cleaner_the_server_refuses_says_once_how_to_fix_it_and_keeps_going(
    users: Users, run: Callable[[Any], Any]
) -> None:
    """A bot's cleaner on the bot user's connection is refused: it logs one error naming
    the cleaner user and how to give it, does not crash, and leaves the lease free."""
    log = Recorder()
    client = users.settings(BOT).async_client()
    keys_of = {n: SubsystemKeys(n, APP.partitions_of(n)) for n in APP.subsystems()}

    async def scenario() -> None:
        cleaner = Cleaner(client, APP, keys_of, consumer="c", log=log)
        stopping = asyncio.Event()
        task = asyncio.create_task(cleaner.run(stopping))
        await asyncio.wait_for(log.told.wait(), 10)
        await asyncio.sleep(cleaner.settings.every * 2.5)  # more cycles: still one error
        assert not task.done()
        stopping.set()
        await asyncio.wait_for(task, 10)
        await client.aclose()

    run(scenario())
    assert 1 == len(log.lines), log.lines
    ((level, event, fields),) = log.lines
    assert ("error", "the server refused the cleaner; this bot does not clean") == (level, event)
    assert "--cleaner-user aclwork-cleaner" in fields["fix"]
    assert "STREAMCQRS_CLEANER_PASSWORD" in fields["fix"]
    assert 0 == users.admin.exists(cleaner_lease("aclwork"))


def test_the_bot_user_holds_its_exclusive_lease_and_the_cleaner_leads(
    users: Users, run: Callable[[Any], Any]
) -> None:
    """The bot user takes, renews and releases its declared exclusive lease; the cleaner
    user takes the cleaner's lease: the keys the grants name are the keys the code uses."""
    bot = users.settings(BOT).async_client()
    cleaner = users.settings(CLEANER).async_client()
    key = WORK.for_object("work-counter").lease("work-counter")

    async def scenario() -> list[bool]:
        held = Lease(bot, key, "t", 5000)
        leader = Lease(cleaner, cleaner_lease("aclwork"), "t", 5000)
        out = [await held.take(), await held.renew(), await held.release()]
        out += [await leader.take(), await leader.release()]
        await bot.aclose()
        await cleaner.aclose()
        return out

    assert [True] * 5 == run(scenario())
    assert 0 == users.admin.exists(key)


SUBMITTER = App("aclsubmit")
SUBMITTER.subsystem("work", partitions=2)


def forward_ticket(ctx: Context) -> str:
    """Submit a ticket to ``work``, whose executor runs in another app; its id."""
    return ctx.submit(root=(Account, ctx.object_id), work="Account.touch", subsystem="work")


@SUBMITTER.handler(Open, stream="front/client-ops", writes=["work/internal-ops"])
async def forward(op: Open, ctx: Context) -> None:
    """What the submitting app's bots do."""
    forward_ticket(ctx)


def test_a_handler_declaring_a_ticket_stream_may_submit_there_as_its_bot_user(
    real: Backend, run: Callable[[Any], Any]
) -> None:
    """A bot whose handler writes ``work/internal-ops`` but does not execute its tickets may
    submit one (the ticket and its first receipt, in one commit) and nothing else there:
    it may not finish a receipt (PEXPIREAT is the executor's)."""
    admin = real.sync_client()
    role = app_acl.bot(SUBMITTER)
    role.apply(admin, PASSWORD)
    client = Settings(url=real.url, username=role.name, password=PASSWORD, retries=0)
    try:
        bot = client.async_client()
        spec = SUBMITTER.handlers[0]
        ctx = Context(spec, encode(Open(), object_id="a-9"), entry_id="1-1", attempt=1,
                      client=bot, keys_of={"work": WORK}, types=SUBMITTER.types)  # fmt: skip
        ticket = forward_ticket(ctx)
        commit = Commit()
        ctx.fill(commit)
        run(commit.run(bot))
        receipt = WORK.for_object(ticket).receipt(ticket)
        with pytest.raises(NoPermissionError):
            run(bot.pexpireat(receipt, 1))
        run(bot.aclose())
    finally:
        admin.execute_command("ACL", "DELUSER", role.name)  # type: ignore[no-untyped-call]
    assert b"Account/a-9" == admin.hget(receipt, "root")
    assert 1 == admin.xlen(WORK.for_object(ticket).stream(IO))
