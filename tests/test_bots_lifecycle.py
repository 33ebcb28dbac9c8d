"""Startup and shutdown hooks in real worker processes, their resources in handlers, and log
lines that name the handler, type and attempt of the entry they are about."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers import App, HandlerError, Resources, StartupFailed
from streamcqrs.handlers.testing import HandlerTest
from streamcqrs.streams.keys import Kind, SubsystemKeys
from tests.botapps import BotProcess, wait_until
from tests.observeapps import GATE, HOOKS_LOG, SUBSYSTEM, Mended, Work
from tests.support import Backend, Run
from tests.test_bots_metrics import put

APP = "tests.observeapps:app"
VIEWS = SubsystemKeys(SUBSYSTEM).partition(0).stream(Kind.VIEWS)


def test_each_process_makes_its_resources_once_and_closes_them(
    real: Backend, tmp_path: Path
) -> None:
    """With two worker processes, each runs the startup hook once before it handles
    anything; every handler run in a process uses that process's one resource; on SIGTERM
    each runs the shutdown hook, which sees every use."""
    client = real.sync_client()
    client.set(GATE, 1)
    hooks = tmp_path / "hooks.log"
    hooks.touch()
    assert real.url is not None
    with BotProcess(real.url, tmp_path / "bots.log", "--processes", "2", app=APP,
                    env={HOOKS_LOG: str(hooks)}) as bot:  # fmt: skip
        # Both workers started (a SIGTERM before a worker's start would find no hooks run).
        wait_until(lambda: 2 == hooks.read_text().count("start "), "two startups", 30, bot)
        count = put(client, [Work(n=n) for n in range(40)])
        wait_until(lambda: count == client.xlen(VIEWS), "a view per operation", 30, bot)
        status, _ = bot.terminate(30)
        assert 0 == status, bot.text()[-3000:]
    lines = [line.split() for line in hooks.read_text().splitlines()]
    starts = {int(pid): int(ident) for word, pid, ident, *_ in lines if word == "start"}
    stops = {int(pid): (int(ident), int(uses)) for word, pid, ident, uses in
             (line for line in lines if line[0] == "stop")}  # fmt: skip
    assert 2 == len(starts), lines
    assert set(starts) == set(stops)
    views = [orjson.loads(raw[b"data"]) for _, raw in client.xrange(VIEWS)]
    for view in views:
        assert starts[view["pid"]] == view["tally"]  # the process's one resource
    assert all(starts[pid] == stops[pid][0] for pid in starts)
    assert count == sum(uses for _, uses in stops.values())


def test_log_lines_of_an_entry_name_its_handler_type_and_attempt(
    real: Backend, tmp_path: Path
) -> None:
    """Every log line a bot writes about a handled entry (here: a retry, then the failure
    for good) names the handler, the message type and the attempt it is about."""
    client = real.sync_client()
    put(client, [Mended(n=1)])
    args = ("--max-attempts", "2", "--retry-base", "0.05", "--log-format", "json")
    assert real.url is not None
    with BotProcess(real.url, tmp_path / "bots.log", *args, app=APP) as bot:
        wait_until(lambda: '"handler failed for good"' in bot.text(), "the failure", 30, bot)
        text = bot.text()
    about = [json.loads(line) for line in text.splitlines()
             if line.startswith("{") and '"message_id"' in line]  # fmt: skip
    assert {"handler failed; retrying", "handler failed for good"} <= {a["event"] for a in about}
    for line in about:
        assert "tests.observeapps.mended" == line["handler"], line
        assert "observed.Mended" == line["type"], line
        assert line["attempt"] in (1, 2), line
    assert [1, 2] == sorted({a["attempt"] for a in about})


def test_handler_test_runs_the_hooks_or_takes_resources(run: Run[None]) -> None:
    """``async with HandlerTest(app)`` runs the startup hooks before and the shutdown hooks
    after; ``resources=`` hands in the test's own; a missing one is a HandlerError that says
    how to make it; a failing startup hook stops with the hook named."""
    events: list[str] = []
    app = App("hooks-test")

    @app.on_startup
    async def first(resources: Resources) -> None:
        events.append("start first")
        resources["db"] = "pool"

    @app.on_startup
    def second(resources: Resources) -> None:
        events.append(f"start second {resources['db']}")

    @app.on_shutdown
    def close(resources: Resources) -> None:
        events.append("stop")

    async def scenario() -> None:
        async with HandlerTest(app) as test:
            assert "pool" == test.resources["db"]
            events.append("test")
        given = HandlerTest(App("given"), resources={"db": "fake"})
        assert "fake" == given.resources["db"]
        try:
            given.resources["http"]
        except HandlerError as exc:
            assert "@app.on_startup" in str(exc) and "db" in str(exc)
        else:
            raise AssertionError("a missing resource must raise")

        broken = App("broken")

        @broken.on_startup
        async def fails(resources: Resources) -> None:
            raise OSError("connection refused")

        try:
            await HandlerTest(broken).start()
        except StartupFailed as exc:
            assert "fails" in str(exc) and "connection refused" in str(exc)
        else:
            raise AssertionError("a failing hook must stop the start")

        stop_for_good = App("stop-for-good")

        @stop_for_good.on_startup
        async def misconfigured(resources: Resources) -> None:
            raise ConfigurationError("SMTP_HOST is not set")

        try:
            await HandlerTest(stop_for_good).start()
        except ConfigurationError as exc:
            assert not isinstance(exc, StartupFailed)
        else:
            raise AssertionError("a ConfigurationError must pass through")

    run(scenario())
    assert ["start first", "start second pool", "test", "stop"] == events


def test_the_examples_slack_sender_posts_through_one_client(run: Run[None]) -> None:
    """The notification example makes its HTTP client once, in its startup hook: two Slack
    sends arrive at the webhook over one kept-alive connection (one peer port), and the
    shutdown hook closes the client."""
    from examples.notification import config
    from examples.notification.app import app as notification_app
    from examples.notification.messages import SendSlackMessage
    from examples.notification.receivers import SlackStandIn

    async def scenario(webhook: SlackStandIn) -> None:
        async with HandlerTest(notification_app) as test:
            for n in (1, 2):
                await test.send(SendSlackMessage(delivery_id=f"{n}.slack", channel="#a",
                                                 text=f"t{n}", notification_id=str(n)),
                                object_id=f"{n}.slack")  # fmt: skip
            http = test.resources["http"]
        assert http.is_closed

    with SlackStandIn() as webhook:
        config.configure(config.Config(slack_webhook_url=webhook.url))
        try:
            run(scenario(webhook))
        finally:
            config.configure(None)
        posts = webhook.wait_for("#a", 2)
    assert ["t1", "t2"] == [p.body["text"] for p in posts]
    assert 1 == len({p.peer for p in posts}), [p.peer for p in posts]
