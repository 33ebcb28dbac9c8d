"""The app: create a customer, then number it under exclusive access, through a ticket."""

from __future__ import annotations

from examples.customers.domain import (
    NUMBERING,
    CreateCustomer,
    Customer,
    CustomerCreated,
    NumberAssigned,
    Numbering,
    NumberTaken,
)
from streamcqrs.handlers import App, Context
from streamcqrs.handlers.exclusive import Exclusive

SUBSYSTEM = "customers"
LEASE = Exclusive("customer-number", ttl=3.0)
"""One assigner at a time; a bot that dies holding it blocks the others for at most 3 s."""

app = App(SUBSYSTEM)
app.tickets(SUBSYSTEM)


@app.handler(
    CreateCustomer,
    stream="customers/client-ops",
    concern="create",
    appends=[SUBSYSTEM],
    writes=["customers/internal-ops"],
)
async def create(op: CreateCustomer, ctx: Context) -> None:
    """Record the customer and, in the same commit, ask for its number."""
    customer = await ctx.load(Customer, ctx.object_id)
    if customer.version:
        return  # created already (the same operation put twice)
    ctx.append(customer, CustomerCreated(name=op.name))
    ctx.submit(root=(Customer, customer.id), work="Customer.assign_number", keep_receipt=60)


def has_no_number(customer: Customer) -> bool:
    """A customer is numbered once."""
    return customer.number is None


@app.method(Customer, subsystem=SUBSYSTEM, precondition=has_no_number, exclusive=LEASE)
async def assign_number(customer: Customer, ctx: Context) -> None:
    """Take the next number and give it to the customer (under the lease, so no two bots
    read the same latest number)."""
    numbering = await ctx.load(Numbering, NUMBERING)
    number = numbering.latest + 1
    ctx.append(numbering, NumberTaken(number=number))
    ctx.append(customer, NumberAssigned(number=number))
