"""The README tour's app, as a user writes it beside their own domain/ and handlers/."""

from __future__ import annotations

from domain import OWN as DOMAIN
from handlers import OWN as HANDLERS
from streamcqrs import Aggregate, App, Context, Event, Operation, message

assert (DOMAIN, HANDLERS) == ("the user's domain package", "the user's handlers package")


@message("shop.PlaceOrder")
class PlaceOrder(Operation):
    """A client asks for an order."""

    sku: str


@message("shop.OrderPlaced")
class OrderPlaced(Event):
    """The order exists."""

    sku: str


class Order(Aggregate):
    """One order; its events set its sku."""

    sku: str = ""

    def apply(self, event: Event) -> None:
        """Fold one event into the order."""
        if isinstance(event, OrderPlaced):
            self.sku = event.sku


app = App("shop")


@app.handler(PlaceOrder, stream="shop/client-ops", appends=["shop"])
async def place(op: PlaceOrder, ctx: Context) -> None:
    """Append OrderPlaced to the order the operation names."""
    order = await ctx.load(Order, ctx.object_id)
    ctx.append(order, OrderPlaced(sku=op.sku))
