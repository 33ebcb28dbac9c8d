"""Tickets: deferred work on an aggregate with a receipt, run by a real bot on a real server.

A ticket runs no sooner than it is due and soon after; a ticket whose root, root type or
work is unknown, or whose precondition is false, records why on its receipt and runs
nothing; a receipt is gone after ``keep_receipt``; a ticket submitted by a handler is part of
that handler's commit (none if the handler fails).
"""

from __future__ import annotations

from typing import Any, cast

import pytest
import redis.asyncio

from streamcqrs.handlers.tickets import Receipt, Tickets
from streamcqrs.streams import Kind, Subsystem, now_ms
from streamcqrs.streams.keys import SubsystemKeys
from tests.deferred_support import running, until
from tests.deferredapps import Account, Open, Ping, desk
from tests.support import Backend, Run

KEYS = SubsystemKeys("desk").partition(0)


async def _open(client: redis.asyncio.Redis, account: str, **fields: Any) -> None:
    """A client opens ``account`` and waits until a bot has handled it."""
    subsystem = Subsystem("desk", client)
    await subsystem.writer("client-ops").put(Open(**fields), object_id=account)
    store = subsystem.aggregates(Account)
    await until(lambda: _exists(store, account), f"account {account} opened", 10)


async def _exists(store: Any, account: str) -> bool:
    return bool(await store.version(account))


async def _done(tickets: Tickets, ticket: str) -> Receipt:
    """Wait until the ticket's receipt says it was done; that receipt."""
    found: list[Receipt] = []

    async def done() -> bool:
        receipt = await tickets.receipt(ticket)
        found[:] = [receipt] if receipt is not None else []
        return receipt is not None and (receipt.done or receipt.failed)

    await until(done, f"ticket {ticket} done", 10)
    return found[0]


def _ms(receipt_time: Any) -> int:
    return round(receipt_time.timestamp() * 1000)


def test_a_ticket_runs_when_due_and_its_receipt_says_so(real: Backend, run: Run[None]) -> None:
    """A ticket with execute_earliest = now + 2 s runs no sooner than that and within 1 s
    after; its receipt gives when it was done, no error, and when it will be deleted."""

    async def scenario() -> None:
        client = real.client()
        tickets = Tickets(Subsystem("desk", client))
        async with running(desk, real.url or ""):
            await _open(client, "a-1")
            due = now_ms() + 2000
            ticket = await tickets.submit(
                root=(Account, "a-1"), work="Account.touch", execute_earliest=due, keep_receipt=60
            )
            waiting = await tickets.receipt(ticket)
            assert waiting is not None and not waiting.done
            assert due == _ms(waiting.execute_earliest)
            receipt = await _done(tickets, ticket)
        account = await Subsystem("desk", client).aggregates(Account).load("a-1")
        assert 1 == len(account.touched)
        assert due <= account.touched[0] <= due + 1000, (due, account.touched)
        assert "" == receipt.error
        done_at = _ms(receipt.done_at)
        assert due <= done_at <= due + 1000
        assert done_at + 60_000 == _ms(receipt.delete_at)
        assert ("Account", "a-1", "Account.touch") == (
            receipt.root_type, receipt.root_id, receipt.work
        )

    run(scenario())


@pytest.mark.parametrize(
    ("root", "work", "reason"),
    [
        (("Account", "nobody"), "Account.touch", "root Account 'nobody' not found in desk"),
        (("Ghost", "a-2"), "Account.touch", "unknown root type 'Ghost'"),
        (("Account", "a-2"), "Account.vanish", "unknown work 'Account.vanish'"),
        (("Account", "a-2"), "desk.NoSuchOperation", "unknown work 'desk.NoSuchOperation'"),
    ],
)
def test_a_ticket_with_an_unknown_root_or_work_gets_an_error_and_runs_nothing(
    real: Backend, run: Run[None], root: tuple[str, str], work: str, reason: str
) -> None:
    """The receipt names what is unknown; the work never runs, on any aggregate."""

    async def scenario() -> None:
        client = real.client()
        tickets = Tickets(Subsystem("desk", client))
        async with running(desk, real.url or ""):
            await _open(client, "a-2")
            ticket = await tickets.submit(root=root, work=work)
            receipt = await _done(tickets, ticket)
        assert reason in receipt.error
        assert receipt.done_at is not None
        account = await Subsystem("desk", client).aggregates(Account).load("a-2")
        assert ([], 1) == (account.touched, account.version)
        assert 0 == await client.exists(KEYS.aggregate("nobody"))

    run(scenario())


def test_a_false_precondition_runs_nothing(real: Backend, run: Run[None]) -> None:
    """An account opened with allow=False fails Account.touch's precondition: the receipt
    says so and no Touched event is written."""

    async def scenario() -> None:
        client = real.client()
        tickets = Tickets(Subsystem("desk", client))
        async with running(desk, real.url or ""):
            await _open(client, "a-3", allow=False)
            ticket = await tickets.submit(root=(Account, "a-3"), work="Account.touch")
            receipt = await _done(tickets, ticket)
        assert "precondition allowed of Account.touch is false" in receipt.error
        account = await Subsystem("desk", client).aggregates(Account).load("a-3")
        assert ([], 1) == (account.touched, account.version)

    run(scenario())


def test_the_receipt_is_gone_after_keep_receipt(real: Backend, run: Run[None]) -> None:
    """A receipt kept for 1 s is there right after the work and gone (None) 1 s later."""

    async def scenario() -> None:
        client = real.client()
        tickets = Tickets(Subsystem("desk", client))
        async with running(desk, real.url or ""):
            await _open(client, "a-4")
            ticket = await tickets.submit(
                root=(Account, "a-4"), work="Account.touch", keep_receipt=1.0
            )
            receipt = await _done(tickets, ticket)
        assert receipt.delete_at is not None
        assert now_ms() < _ms(receipt.delete_at)

        async def gone() -> bool:
            return await tickets.receipt(ticket) is None

        await until(gone, "the receipt to be deleted", 5)
        assert now_ms() >= _ms(receipt.delete_at)
        key = KEYS.receipt(ticket)
        assert 0 == await client.exists(key)

    run(scenario())


def test_an_operation_as_work_runs_its_handler_on_the_root(real: Backend, run: Run[None]) -> None:
    """work=Ping(...) runs Ping's handler with the root's id as its object."""

    async def scenario() -> None:
        client = real.client()
        tickets = Tickets(Subsystem("desk", client))
        async with running(desk, real.url or ""):
            await _open(client, "a-5")
            ticket = await tickets.submit(root=(Account, "a-5"), work=Ping(note="hello"))
            receipt = await _done(tickets, ticket)
        assert "" == receipt.error
        account = await Subsystem("desk", client).aggregates(Account).load("a-5")
        assert ["hello"] == account.pinged

    run(scenario())


def test_a_ticket_submitted_by_a_handler_is_part_of_its_commit(
    real: Backend, run: Run[None]
) -> None:
    """A handler that submits a ticket and then fails leaves no ticket (nothing in the stream,
    the delayed set or any receipt); one that succeeds leaves one that runs."""

    async def scenario() -> None:
        client = real.client()
        desk_sub = Subsystem("desk", client)
        async with running(desk, real.url or ""):
            writer = desk_sub.writer("client-ops")
            await writer.put(Open(submit_in=1, fail_after_submit=True), object_id="a-6")
            await writer.put(Open(submit_in=300), object_id="a-7")
            store = desk_sub.aggregates(Account)

            async def touched() -> bool:
                return bool((await store.load("a-7")).touched)

            await until(touched, "a-7's ticket to run", 10)
        assert 0 == await store.version("a-6")
        receipts = [k async for k in client.scan_iter(match="{desk.0}:receipt:*")]
        assert 1 == len(receipts)
        tickets = cast(list[Any], await client.xrange(KEYS.stream(Kind.INTERNAL_OPERATIONS)))
        assert 1 == len(tickets)
        assert 0 == await client.zcard(KEYS.delayed(Kind.INTERNAL_OPERATIONS))

    run(scenario())
