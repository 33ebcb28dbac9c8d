"""OpenTelemetry traces: trace context through the envelope, spans per put, handler run and
commit, one trace from the example API's POST to the notification's terminal event.

The end-to-end test runs the notification example's three bots (``--only notification``,
``email``, ``slack``) as ``Bot`` objects in this process, beside the API under uvicorn in a
thread: one in-memory span exporter then sees every span of every bot. Between them the
trace context travels only as it does between processes, in the entries' ``trace`` field.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from examples.notification import config
from examples.notification.app import app as notification_app
from examples.notification.demo import api_server
from examples.notification.receivers import SlackStandIn, SmtpReceiver
from streamcqrs.bots.bot import Bot
from streamcqrs.bots.config import BotConfig
from streamcqrs.streams import Subsystem
from streamcqrs.streams.envelope import parse
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.tracing import refresh, trace_id
from tests.support import Backend, Run, async_client


def _reset_global_provider() -> None:
    """Forget the global tracer provider (OpenTelemetry sets it once per process; its own
    test utilities reset the same three globals between tests)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace._PROXY_TRACER_PROVIDER = trace.ProxyTracerProvider()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test: every finished span lands in the exporter it yields."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_global_provider()
    trace.set_tracer_provider(provider)
    refresh()  # noticed at once, not within streams.tracing.RECHECK
    yield exporter
    provider.shutdown()
    _reset_global_provider()
    refresh()


def by_id(found: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    """Spans by span id."""
    return {s.context.span_id: s for s in found if s.context is not None}


def ancestors(span: ReadableSpan, index: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    """The span's parents, nearest first, as far as the exporter holds them."""
    chain = []
    parent = span.parent
    while parent is not None and parent.span_id in index:
        span = index[parent.span_id]
        chain.append(span)
        parent = span.parent
    return chain


def test_one_trace_from_the_api_post_to_the_terminal_event(
    real: Backend, run: Run[Any], spans: InMemorySpanExporter
) -> None:
    """A POST to the example API starts a trace; the put it makes, every handler run and
    commit of the three bots downstream (the notification, its email and Slack sends, the
    saga's outcomes) are spans of that one trace, each a child of the span that wrote its
    input; the entry of NotificationSent names a span of the trace whose ancestors lead
    back through the sends to the POST."""
    assert real.url is not None
    url = real.url
    with contextlib.ExitStack() as stack:
        smtp = stack.enter_context(SmtpReceiver())
        slack = stack.enter_context(SlackStandIn())
        config.configure(config.Config(smtp_port=smtp.port, slack_webhook_url=slack.url))
        stack.callback(config.configure, None)
        base = stack.enter_context(api_server(url))
        nid = run(_post_and_await(url, base))

    finished = spans.get_finished_spans()
    posts = [s for s in finished if s.name == "POST /notifications"
             and s.kind is trace.SpanKind.SERVER]  # fmt: skip
    assert 1 == len(posts), [s.name for s in finished]
    post = posts[0]
    assert post.context is not None
    the_trace = post.context.trace_id
    ours = [s for s in finished if s.context is not None and s.context.trace_id == the_trace]
    names = {s.name for s in ours}
    for expected in ("put notification/client-ops", "handle notification/client-ops",
                     "commit notification/client-ops", "handle email/client-ops",
                     "handle slack/client-ops", "handle email/events", "handle slack/events",
                     "handle notification/sagas", "commit email/events",
                     "commit slack/events"):  # fmt: skip
        assert expected in names, sorted(names)
    index = by_id(ours)
    for span in ours:  # one tree: every span but the POST's own has its parent in the trace
        if span is not post:
            assert span.parent is not None and span.parent.span_id in index, span.name
    for span in ours:
        if span.name.startswith(("handle ", "commit ", "put ")):
            assert post in ancestors(span, index), span.name

    client = real.sync_client()
    terminal = _entry_of(client, nid, "notification.NotificationSent")
    assert f"{the_trace:032x}" == trace_id(terminal.trace)
    writer = index[int(terminal.trace.split("-")[2], 16)]
    chain = [s.name for s in ancestors(writer, index)]
    assert writer.name in ("handle email/events", "handle slack/events")  # the saga's outcome
    assert "handle notification/client-ops" in chain
    assert any(n in chain for n in ("handle email/client-ops", "handle slack/client-ops"))
    assert "POST /notifications" == chain[-1]


async def _post_and_await(url: str, base: str) -> str:
    """Run the three bots here, POST one notification, await its final view; its id."""
    bots = [
        Bot(notification_app, BotConfig(url=url, only=(only,), block_ms=50, mover_interval=0.05))
        for only in ("notification", "email", "slack")
    ]
    tasks = [asyncio.create_task(bot.run()) for bot in bots]
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            reply = await http.post(
                "/notifications", json={"recipient": "alice", "subject": "traced", "body": "b"}
            )
            assert 202 == reply.status_code, reply.text
            nid: str = reply.json()["id"]
            client = async_client(url)
            views = Subsystem("notification", client).reader("views")
            try:
                async with asyncio.timeout(30):
                    while True:
                        raw = await views.latest_raw(nid)
                        if raw is not None and orjson.loads(raw)["status"] == "sent":
                            return nid
                        await asyncio.sleep(0.05)
            finally:
                await client.aclose()
    finally:
        for bot in bots:
            bot.stop()
        await asyncio.gather(*tasks)
        for bot in bots:
            await bot.client.aclose()


def _entry_of(client: redis.Redis, nid: str, type_name: str) -> Any:
    """The envelope of the notification's event of ``type_name`` in the events stream."""
    keys = SubsystemKeys("notification", notification_app.partitions_of("notification"))
    for part in keys.all():
        key = part.stream(Kind.EVENTS)
        for entry_id, raw in client.xrange(key):
            envelope = parse(key, entry_id.decode(), raw)
            if envelope.type == type_name and envelope.object_id == nid:
                return envelope
    raise AssertionError(f"no {type_name} of {nid} in the events stream")


def test_without_a_provider_the_input_trace_is_carried_on_unchanged() -> None:
    """With no tracer provider set, a handler's outputs carry its input's traceparent as it
    came (no spans are made, the trace id still reaches every entry downstream)."""
    from streamcqrs.domain import Operation, message
    from streamcqrs.handlers import App, Context
    from streamcqrs.handlers.context import PutOutput
    from streamcqrs.handlers.testing import HandlerTest
    from streamcqrs.streams.envelope import encode

    @message("tracing-test.Ping")
    class Ping(Operation):
        n: int

    app = App("tracing-test")

    @app.handler(Ping, stream="tracing-test/client-ops", writes=["tracing-test/internal-ops"])
    async def forward(op: Ping, ctx: Context) -> None:
        ctx.put("tracing-test/internal-ops", Ping(n=op.n + 1))

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    envelope = encode(Ping(n=1), trace=parent, types=app.types)
    assert parent == parse("s", "1-0", envelope.entry()).trace
    test = HandlerTest(app)
    spec = test.handler_for(Ping(n=1))
    ctx = Context(spec, envelope, entry_id="1-0", attempt=1, client=test.client,
                  keys_of=test.keys_of, types=app.types)  # fmt: skip
    asyncio.run(forward(Ping(n=1), ctx))
    (output,) = ctx.outputs
    assert isinstance(output, PutOutput)
    assert parent == output.envelope.trace


def test_a_plain_def_handlers_own_spans_nest_under_its_handler_span(
    spans: InMemorySpanExporter,
) -> None:
    """A plain ``def`` handler runs in a thread; a span it opens there is a child of the
    span of its handler run, as an ``async def`` handler's would be."""
    from streamcqrs.domain import Operation, message
    from streamcqrs.handlers import App, Context
    from streamcqrs.handlers.testing import HandlerTest

    @message("tracing-sync.Ping")
    class Ping(Operation):
        n: int

    app = App("tracing-sync")

    @app.handler(Ping, stream="tracing-sync/client-ops")
    def work(op: Ping, ctx: Context) -> None:
        with trace.get_tracer("tests").start_as_current_span("inside the thread"):
            pass

    asyncio.run(HandlerTest(app).send(Ping(n=1)))

    found = list(spans.get_finished_spans())
    (inside,) = [s for s in found if s.name == "inside the thread"]
    assert inside.parent is not None
    parent = by_id(found)[inside.parent.span_id]
    assert "handle tracing-sync/client-ops" == parent.name
