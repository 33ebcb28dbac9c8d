"""handlers.testing: users run a handler in a unit test and assert on what it emitted."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from examples.notification.app import app as notification_app
from examples.notification.messages import NotificationRequested, SendEmail, SendNotification
from streamcqrs.domain import Operation, message
from streamcqrs.domain.errors import ConcurrencyConflict
from streamcqrs.handlers import App, Context, Retry
from streamcqrs.handlers.errors import HandlerError
from streamcqrs.handlers.testing import HandlerTest
from tests.messages import Account, Deposited, Opened
from tests.support import Run


@message("test.OpenAccount")
class OpenAccount(Operation):
    owner: str


@message("test.Deposit")
class Deposit(Operation):
    amount: int


bank = App("bank")


@bank.handler(OpenAccount, stream="bank/client-ops", appends=["bank"],
              writes=["bank/views", "bank/internal-ops"])  # fmt: skip
async def open_account(op: OpenAccount, ctx: Context) -> None:
    account = await ctx.load(Account, ctx.object_id)
    ctx.append(account, Opened(owner=op.owner))
    ctx.put_view("bank/views", account.id, {"owner": op.owner, "balance": 0})
    ctx.put("bank/internal-ops", Deposit(amount=1), object_id=account.id, delay=60)


@bank.handler(Deposit, stream="bank/internal-ops", appends=["bank"])
def deposit(op: Deposit, ctx: Context) -> None:
    """A plain def handler: runs in a thread."""
    if op.amount < 0:
        raise Retry(delay=1, reason="negative")
    account = Account(id=ctx.object_id, version=1)  # as if loaded at version 1
    ctx.append(account, Deposited(amount=op.amount))


def test_send_runs_the_handler_and_returns_what_it_emitted(run: Run[Any]) -> None:
    """Events, a view's bytes and a delayed put come back decoded; state is committed."""
    test = HandlerTest(bank)

    emitted = run(test.send(OpenAccount(owner="ann"), object_id="a-1"))

    assert [Opened(owner="ann")] == emitted.events
    assert {"a-1": [Opened(owner="ann")]} == emitted.appends
    view = emitted.put_into("bank/views")[0]
    assert {"owner": "ann", "balance": 0} == orjson.loads(view.message)
    delayed = emitted.put_into("bank/internal-ops")[0]
    assert (Deposit(amount=1), "a-1") == (delayed.message, delayed.object_id)
    assert delayed.due_ms is not None
    assert "ann" == run(test.load(Account, "a-1")).owner


def test_the_next_send_sees_the_state_the_first_left(run: Run[Any]) -> None:
    """A second handler run loads what the first committed; version checks apply."""
    test = HandlerTest(bank)
    run(test.send(OpenAccount(owner="ann"), object_id="a-1"))

    run(test.send(Deposit(amount=5), object_id="a-1"))

    account = run(test.load(Account, "a-1"))
    assert (2, 5) == (account.version, account.balance)
    with pytest.raises(ConcurrencyConflict):  # deposit assumes version 1; it is now 2
        run(test.send(Deposit(amount=5), object_id="a-1"))


def test_control_flow_from_a_handler_is_raised_to_the_test(run: Run[Any]) -> None:
    """Retry (and any error) comes out of send, and nothing is committed."""
    test = HandlerTest(bank)
    run(test.send(OpenAccount(owner="ann"), object_id="a-1"))

    with pytest.raises(Retry, match="negative"):
        run(test.send(Deposit(amount=-1), object_id="a-1"))

    account = run(test.load(Account, "a-1"))
    assert (1, 0) == (account.version, account.balance)


def test_a_message_no_handler_takes_is_refused_clearly(run: Run[Any]) -> None:
    """send names the type and how many handlers take it."""
    with pytest.raises(HandlerError, match="0 handlers take SendEmail"):
        run(HandlerTest(bank).send(SendEmail(delivery_id="d", to="x@example.com", subject="s",
                                             body="b", notification_id="1")))  # fmt: skip


def test_an_input_without_an_object_id_is_failed_at_once_not_made_aggregate_empty(
    run: Run[Any],
) -> None:
    """A handler that loads or appends to the aggregate of an input put without an object id
    fails with a HandlerError saying so (not retried: a dead letter at once), and no
    aggregate with the id "" is written (first-hour review, F18)."""
    test = HandlerTest(bank)
    with pytest.raises(HandlerError, match=r"empty id .* object_id=") as failed:
        run(test.send(OpenAccount(owner="ann")))
    assert "open_account" in str(failed.value)
    with pytest.raises(HandlerError, match="empty id"):
        run(test.send(Deposit(amount=5)))  # append to an aggregate it did not load
    assert 0 == run(test.load(Account, "")).version  # nothing was appended under ""


def test_the_notification_example_can_be_unit_tested(run: Run[Any]) -> None:
    """The example's notification bot, without a server: it asks both channels and waits."""
    test = HandlerTest(notification_app)
    op = SendNotification(notification_id="1", recipient="alice", subject="Hi", body="there")

    emitted = run(test.send(op, object_id="1"))

    requested = emitted.events[0]
    assert isinstance(requested, NotificationRequested)
    assert ("email", "slack") == requested.channels
    assert ["alice@example.com"] == [
        p.message.to for p in emitted.put_into("email/client-ops")
    ]
    assert 1 == len(emitted.put_into("slack/client-ops"))
    assert 1 == len(emitted.put_into("notification/sagas"))


@message("test.Audit")
class Audit(Operation):
    """Deposit ``amount``, snapshot the account, then fail if ``fail``."""

    amount: int
    fail: bool = False


@bank.handler(Audit, stream="bank/client-ops", concern="audit", appends=["bank"],
              writes=["bank/snapshots"])  # fmt: skip
async def audit(op: Audit, ctx: Context) -> None:
    """Append, snapshot in the same commit; a failure after the snapshot commits nothing."""
    account = await ctx.load(Account, ctx.object_id)
    ctx.append(account, Deposited(amount=op.amount))
    ctx.snapshot(account)
    if op.fail:
        raise RuntimeError("after the snapshot")


def test_a_handler_snapshot_is_committed_with_its_events_or_not_at_all(run: Run[Any]) -> None:
    """ctx.snapshot stores the state the handler left, in its commit: readable typed through
    Subsystem.snapshot; a handler that raises after taking one leaves no snapshot."""
    test = HandlerTest(bank)
    run(test.send(OpenAccount(owner="ann"), object_id="a-7"))

    run(test.send(Audit(amount=5), object_id="a-7"))
    with pytest.raises(RuntimeError):
        run(test.send(Audit(amount=50, fail=True), object_id="a-7"))

    stored = run(test.subsystem("bank").snapshot(Account, "a-7"))
    assert Account(id="a-7", owner="ann", balance=5, version=2) == stored


def test_a_snapshot_needs_the_snapshots_stream_declared(run: Run[Any]) -> None:
    """ctx.snapshot of a handler that did not declare writes to <sub>/snapshots is refused."""
    sloppy = App("bank")

    @sloppy.handler(Audit, stream="bank/client-ops", appends=["bank"])
    async def audit(op: Audit, ctx: Context) -> None:
        ctx.snapshot(await ctx.load(Account, ctx.object_id))

    with pytest.raises(HandlerError, match="bank/snapshots"):
        run(HandlerTest(sloppy).send(Audit(amount=1), object_id="a-1"))
