"""The app the gateway tests serve: seed 002's ``hello`` microservice, as handlers."""

from __future__ import annotations

from pydantic import Field

from streamcqrs.domain import Event, Operation, message
from streamcqrs.handlers import App, Context


@message("request_from_human")
class RequestFromHuman(Operation):
    """Seed 002's event: a human said their name."""

    name: str = Field(min_length=1, max_length=200)


@message("hello.Greeted")
class Greeted(Event):
    """The hello service greeted someone."""

    response: str


app = App("hello")


@app.handler(RequestFromHuman, stream="hello/client-ops", concern="greet",
             writes=["hello/views"], appends=["hello"])  # fmt: skip
async def greet(op: RequestFromHuman, ctx: Context) -> None:
    """Greet: a view for the UI."""
    ctx.put_view("hello/views", ctx.object_id, {"response": f"Hello, {op.name}!"})
