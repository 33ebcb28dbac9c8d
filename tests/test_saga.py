"""The framework's saga, with real bots: endings as data, failures as outcomes, the deadline.

An order waits for a charge and a shipment (two operations of other subsystems). Each test
runs a bot of the app in this process on the real server and looks at what the order ended
with: exactly one ending, the one the outcomes call for; an awaited operation whose handler
always raises ends the saga "failed" before the deadline, naming the error; the deadline
ends a saga whose outcomes do not come; endings naming unknown types or wrong fields are
refused when they are declared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from pydantic import Field

from streamcqrs.bots import Bot, BotConfig
from streamcqrs.domain import Aggregate, Event, Operation, message
from streamcqrs.domain.errors import ConfigurationError, RegistryError
from streamcqrs.handlers import App, Context
from streamcqrs.handlers.saga import Awaited, Ending, Saga, SagaState
from streamcqrs.streams import PartitionKeys, Subsystem
from tests.support import Backend, Run


@message("shop.Order")
class PlaceOrder(Operation):
    """A client's order: charge and ship; ``charge_fails`` makes the charge raise."""

    order_id: str
    charge_fails: bool = False
    ship_never: bool = False
    deadline: float = 30.0


@message("shop.Charge")
class Charge(Operation):
    """Charge a card (another subsystem's work)."""

    order_id: str
    fails: bool = False


@message("shop.Ship")
class Ship(Operation):
    """Ship the goods (another subsystem's work)."""

    order_id: str
    never: bool = False


@message("shop.Charged")
class Charged(Event):
    """The charge went through."""

    order_id: str


@message("shop.Shipped")
class Shipped(Event):
    """The goods left."""

    order_id: str


@message("shop.OrderPlaced")
class OrderPlaced(Event):
    """The order exists."""

    order_id: str


@message("shop.OrderCompleted")
class OrderCompleted(Event):
    """Charged and shipped."""

    order_id: str
    succeeded: tuple[str, ...] = ()
    at_ms: int = 0


@message("shop.OrderAbandoned")
class OrderAbandoned(Event):
    """Something failed, or the deadline passed first."""

    order_id: str
    reason: str
    failed: dict[str, str] = Field(default_factory=dict)
    missing: tuple[str, ...] = ()
    at_ms: int = 0


class Order(Aggregate):
    """An order and how it ended."""

    ended: list[str] = Field(default_factory=list)

    def apply(self, event: Event) -> None:
        """Record the endings (there must be one)."""
        if isinstance(event, OrderCompleted | OrderAbandoned):
            self.ended = [*self.ended, type(event).__name__]


class Ledger(Aggregate):
    """Where a charge or a shipment is recorded."""

    def apply(self, event: Event) -> None:
        """Nothing to fold."""


app = App("shop")
FULFIL = app.saga(
    Saga(
        name="fulfil",
        home="shop",
        target=Order,
        outcomes={Charged: True, Shipped: True},
        reports=["billing", "depot"],
    )
)


@app.handler(PlaceOrder, stream="shop/client-ops", appends=["shop"],
             writes=["billing/client-ops", "depot/client-ops", "shop/sagas",
                     "shop/internal-ops"])  # fmt: skip
async def place(op: PlaceOrder, ctx: Context) -> None:
    """Place the order and start the saga awaiting the charge and the shipment."""
    order = await ctx.load(Order, op.order_id)
    ctx.append(order, OrderPlaced(order_id=op.order_id))
    FULFIL.start(
        ctx,
        saga_id=f"{op.order_id}.fulfil",
        target_id=op.order_id,
        awaited={
            "charge": Awaited(
                "billing/client-ops", Charge(order_id=op.order_id, fails=op.charge_fails),
                op.order_id,
            ),
            "ship": Awaited(
                "depot/client-ops", Ship(order_id=op.order_id, never=op.ship_never), op.order_id
            ),
        },
        deadline=op.deadline,
        on_success=Ending.of(OrderCompleted, order_id=op.order_id),
        on_failure=Ending.of(OrderAbandoned, order_id=op.order_id, reason="failed"),
        on_timeout=Ending.of(OrderAbandoned, order_id=op.order_id, reason="timeout"),
    )


@app.handler(Charge, stream="billing/client-ops", appends=["billing"])
async def charge(op: Charge, ctx: Context) -> None:
    """Charge, or raise every time (the bot retries, then Fails and dead-letters it)."""
    if op.fails:
        raise RuntimeError(f"card declined for order {op.order_id}")
    ctx.append(Ledger(id=op.order_id), Charged(order_id=op.order_id))


@app.handler(Ship, stream="depot/client-ops", appends=["depot"])
async def ship(op: Ship, ctx: Context) -> None:
    """Ship; or, told never to, report nothing (the saga's deadline must end the order)."""
    if not op.never:
        ctx.append(Ledger(id=op.order_id), Shipped(order_id=op.order_id))


def saga_ended(client: redis.Redis, order_id: str) -> Callable[[], bool]:
    """Whether the order's saga has ended (its last event is SagaEnded)."""
    key = PartitionKeys("shop", 0).aggregate(f"{order_id}.fulfil")
    return lambda: b"streamcqrs.saga.Ended" in (client.lindex(key, -1) or b"")


def run_bot(real: Backend, run: Run[Any], done: Callable[[], bool]) -> None:
    """Run a bot of the app in this process until ``done()`` (bounded: 30 s)."""

    async def scenario() -> None:
        config = BotConfig(url=real.url, block_ms=100, mover_interval=0.05, max_attempts=2,
                           retry_base=0.05)  # fmt: skip
        bot = Bot(app, config)
        task = asyncio.create_task(bot.run())
        deadline = time.monotonic() + 30
        try:
            while not done():
                assert time.monotonic() < deadline, "the saga did not end in 30 s"
                assert not task.done(), task
                await asyncio.sleep(0.05)
        finally:
            bot.stop()
            await task
            await bot.client.aclose()

    run(scenario())


def ended(real: Backend, run: Run[Any], order_id: str) -> tuple[list[Event], SagaState]:
    """The order's events and its saga's state."""
    shop = Subsystem("shop", real.client())

    async def read() -> tuple[list[Event], SagaState]:
        records = await shop.aggregates(Order).events(order_id)
        saga = await shop.aggregates(SagaState).load(f"{order_id}.fulfil")
        return [r.message for r in records if isinstance(r.message, Event)], saga

    return run(read())


def place_order(real: Backend, run: Run[Any], op: PlaceOrder) -> None:
    """A client puts the order."""
    run(Subsystem("shop", real.client()).writer("client-ops").put(op, object_id=op.order_id))


def test_all_outcomes_succeeding_end_the_order_completed_once(
    real: Backend, run: Run[Any]
) -> None:
    """Charge and shipment both succeed: the order ends OrderCompleted naming both, once."""
    place_order(real, run, PlaceOrder(order_id="o1"))
    run_bot(real, run, saga_ended(real.sync_client(), "o1"))

    events, saga = ended(real, run, "o1")
    endings = [e for e in events if isinstance(e, OrderCompleted | OrderAbandoned)]
    assert [OrderCompleted] == [type(e) for e in endings]
    assert isinstance(endings[0], OrderCompleted)
    assert ("charge", "ship") == endings[0].succeeded
    assert ("succeeded", 2) == (saga.result, len(saga.outcomes))


def test_an_operation_that_always_raises_fails_the_saga_before_the_deadline(
    real: Backend, run: Run[Any]
) -> None:
    """The charge's handler raises every time: after its attempts it is Failed and
    dead-lettered, and that dead letter ends the saga "failed" at once (not at the 30 s
    deadline), naming the error."""
    started = time.monotonic()
    place_order(real, run, PlaceOrder(order_id="o2", charge_fails=True, deadline=30.0))
    run_bot(real, run, saga_ended(real.sync_client(), "o2"))

    events, saga = ended(real, run, "o2")
    assert time.monotonic() - started < 20
    (ending,) = [e for e in events if isinstance(e, OrderCompleted | OrderAbandoned)]
    assert isinstance(ending, OrderAbandoned) and "failed" == ending.reason
    assert ["charge"] == list(ending.failed)
    assert "card declined for order o2" in ending.failed["charge"]
    assert "failed" == saga.result


def test_the_deadline_ends_a_saga_whose_outcomes_do_not_come(
    real: Backend, run: Run[Any]
) -> None:
    """The shipment never reports: at the 1.5 s deadline the order ends "timeout", naming
    the missing shipment and keeping the charge that succeeded."""
    place_order(real, run, PlaceOrder(order_id="o3", ship_never=True, deadline=1.5))
    run_bot(real, run, saga_ended(real.sync_client(), "o3"))

    events, saga = ended(real, run, "o3")
    (ending,) = [e for e in events if isinstance(e, OrderCompleted | OrderAbandoned)]
    assert isinstance(ending, OrderAbandoned)
    assert ("timeout", ("ship",), {}) == (ending.reason, ending.missing, ending.failed)
    assert "timed-out" == saga.result


class Unregistered(Event):
    """An event type nobody registered."""

    order_id: str


def test_an_ending_or_outcome_naming_an_unknown_type_is_refused_when_declared() -> None:
    """An ending of an unregistered event, an ending with a field its event lacks, a fill
    of something a saga does not compute, and a saga awaiting an unregistered outcome type
    are each refused at once, naming what is wrong."""
    with pytest.raises(RegistryError, match="Unregistered"):
        Ending.of(Unregistered, order_id="x")
    with pytest.raises(ConfigurationError, match=r"shop\.OrderAbandoned"):
        Ending.of(OrderAbandoned, order_id="x", reason="r", colour="red")
    with pytest.raises(ConfigurationError, match="fills"):
        Ending.of(OrderCompleted, order_id="x", fill={"succeeded": "winners"})
    with pytest.raises(RegistryError, match="Unregistered"):
        App("other").saga(Saga(name="s", home="shop", target=Order,
                               outcomes={Unregistered: True}, reports=["billing"]))  # fmt: skip
