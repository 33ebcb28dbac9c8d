"""The notification saga: exactly one terminal event whatever the order of what arrives.

The saga's handlers run here in this process, each run committed like a bot commits it (its
outputs in one ``commit.lua`` call; a version conflict reruns the handler), with no bot
processes: every order in which the saga entry, the two outcomes and the deadline can arrive
is driven one by one, and then again with everything delivered twice. Also the notification
bot's choices per recipient preference. Runs on a real server and on the in-memory mode.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio

from examples.notification import config, delivery, notify
from examples.notification.aggregates import Notification
from examples.notification.app import app
from examples.notification.messages import (
    TERMINAL_EVENTS,
    EmailFailed,
    EmailSent,
    NotificationFailed,
    NotificationSent,
    NotificationSuppressed,
    SendEmail,
    SendNotification,
    SendSlackMessage,
    SlackMessageFailed,
    SlackMessageSent,
)
from examples.notification.saga import DELIVERY, saga_id
from streamcqrs.domain import Event, Message, new_message_id
from streamcqrs.domain.errors import ConcurrencyConflict
from streamcqrs.handlers import Context, Resources, Retry, lifecycle
from streamcqrs.handlers.context import PutOutput
from streamcqrs.handlers.saga import (
    SagaDeadline,
    SagaEnded,
    SagaEntry,
    SagaState,
    operation_id,
)
from streamcqrs.streams import Commit, Subsystem, SubsystemKeys, now_ms, outbox
from streamcqrs.streams.connection import is_cluster
from streamcqrs.streams.envelope import decode, encode
from tests.support import Backend, Run

ARRIVALS = ("start", "email", "slack", "deadline")


@pytest.fixture(autouse=True)
def settings() -> Iterator[config.Config]:
    """Handlers of this process use the built-in directory and a long default deadline."""
    chosen = config.Config(deadline=3600)
    config.configure(chosen)
    yield chosen
    config.configure(None)


class Harness:
    """Runs one handler of the app on one message and commits its outputs as a bot would."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.keys_of = {s: SubsystemKeys(s, app.partitions_of(s)) for s in app.subsystems()}
        self.resources: Resources | None = None
        """What the app's startup hooks made (the senders), once, on the first handle."""
        self.cluster = is_cluster(client)

    async def close(self) -> None:
        """Run the app's shutdown hooks if the startup hooks ran."""
        if self.resources is not None:
            await lifecycle.stop(app.shutdown, self.resources)

    async def handle(
        self,
        fn: Any,
        message: Message,
        *,
        object_id: str = "",
        message_id: str | None = None,
        attempt: int = 1,
        causation_id: str = "",
    ) -> Context:
        """Run ``fn``'s handler on ``message`` to its commit; return the committed context.

        ``causation_id``: the message the input was caused by (an outcome event's operation).
        """
        spec = next(s for s in app.handlers if s.fn == fn and type(message) in s.message_types)
        if self.resources is None:
            self.resources = Resources()
            await lifecycle.start(app.startup, self.resources)
        envelope = encode(
            message, object_id=object_id, message_id=message_id or new_message_id(),
            causation_id=causation_id, types=app.types,
        )  # fmt: skip
        for _ in range(20):  # a conflict means another handler committed first: run again
            ctx = Context(spec, envelope, entry_id="0-0", attempt=attempt, client=self.client,
                          keys_of=self.keys_of, types=app.types,
                          resources=self.resources)  # fmt: skip
            result = spec.fn(message, ctx)
            if inspect.isawaitable(result):
                await result
            # On a cluster, as a bot does: outputs for other slots go through the input
            # partition's outbox, forwarded here at once; one refused there runs it again.
            home = self.keys_of[spec.source.subsystem].for_object(object_id or envelope.message_id)
            commit = Commit(home=home) if self.cluster else Commit()
            ctx.fill(commit)
            try:
                if commit:
                    await commit.run(self.client)
                if self.cluster:
                    report = await outbox.drain(self.client, [home], send_back=False)
                    if report.refused:
                        continue
                return ctx
            except ConcurrencyConflict:
                continue
        raise AssertionError(f"{spec.name} kept conflicting")


def puts(ctx: Context) -> dict[str, list[PutOutput]]:
    """The puts a handler made, by target stream."""
    out: dict[str, list[PutOutput]] = {}
    for output in ctx.outputs:
        if isinstance(output, PutOutput):
            out.setdefault(str(output.target), []).append(output)
    return out


async def events_of(sub: Subsystem, aggregate_id: str) -> list[Event]:
    """The events of one aggregate of ``sub``, in order."""
    records = await sub.aggregates(Notification).events(aggregate_id)
    return [r.message for r in records if isinstance(r.message, Event)]


def terminal(events: list[Event]) -> list[Event]:
    """The terminal events among ``events``."""
    return [e for e in events if isinstance(e, TERMINAL_EVENTS)]


class Workflow:
    """One notification to alice (email and Slack) and the arrivals its saga awaits."""

    def __init__(self, harness: Harness, sub: Subsystem, nid: str) -> None:
        self.harness = harness
        self.sub = sub
        self.nid = nid
        self.arrivals: dict[str, tuple[Any, Message]] = {}

    async def request(self, email_ok: bool, slack_ok: bool) -> None:
        """Handle the client's operation; prepare the four arrivals from what it put."""
        op = SendNotification(notification_id=self.nid, recipient="alice", subject="s", body="b")
        ctx = await self.harness.handle(notify.request_notification, op, object_id=self.nid)
        put = puts(ctx)
        email = put["email/client-ops"][0].envelope
        slack = put["slack/client-ops"][0].envelope
        entry = put["notification/sagas"][0]
        at = now_ms()
        email_outcome: Message = (
            EmailSent(delivery_id=f"{self.nid}.email", operation_id=email.message_id,
                      to="alice@example.com", notification_id=self.nid, at_ms=at)
            if email_ok
            else EmailFailed(delivery_id=f"{self.nid}.email", operation_id=email.message_id,
                             to="alice@example.com", error="SMTP 550 no such mailbox",
                             notification_id=self.nid, at_ms=at)
        )  # fmt: skip
        slack_outcome: Message = (
            SlackMessageSent(delivery_id=f"{self.nid}.slack", operation_id=slack.message_id,
                             channel="#alice", notification_id=self.nid, at_ms=at)
            if slack_ok
            else SlackMessageFailed(delivery_id=f"{self.nid}.slack",
                                    operation_id=slack.message_id, channel="#alice",
                                    error="404 channel_not_found", notification_id=self.nid,
                                    at_ms=at)
        )  # fmt: skip
        start = saga_start_of(entry)
        assert {email.message_id: "email", slack.message_id: "slack"} == start.awaited
        self.email_id = email.message_id
        self.arrivals = {
            "start": (DELIVERY._start, start, ""),
            "email": (DELIVERY._outcome, email_outcome, email.message_id),
            "slack": (DELIVERY._outcome, slack_outcome, slack.message_id),
            "deadline": (DELIVERY._deadline, SagaDeadline(saga=DELIVERY.name,
                                                          saga_id=saga_id(self.nid)), ""),
        }  # fmt: skip

    async def arrive(self, name: str, message_id: str | None = None) -> None:
        """Deliver one arrival to its handler."""
        fn, message, cause = self.arrivals[name]
        await self.harness.handle(fn, message, object_id=self.nid, message_id=message_id,
                                  causation_id=cause)  # fmt: skip

    async def notification_events(self) -> list[Event]:
        """The notification aggregate's events."""
        return await events_of(self.sub, self.nid)

    async def saga_events(self) -> list[Event]:
        """The saga aggregate's events."""
        return await events_of(self.sub, saga_id(self.nid))


def saga_start_of(entry: PutOutput) -> SagaEntry:
    """The saga entry a put carries."""
    message = decode(str(entry.target), "0-0", entry.envelope, app.types)
    assert isinstance(message, SagaEntry)
    return message


def expected_end(order: tuple[str, ...], email_ok: bool, slack_ok: bool) -> tuple[str, str]:
    """A plain model of the saga: (terminal event type, failure reason or "")."""
    started, outcomes, deadline = False, set(), False
    for name in order:
        started |= name == "start"
        deadline |= name == "deadline"
        if name in ("email", "slack"):
            outcomes.add(name)
        if started and outcomes == {"email", "slack"}:
            return ("NotificationSent", "") if email_ok and slack_ok else (
                "NotificationFailed", "channels-failed")  # fmt: skip
        if started and deadline:
            return ("NotificationFailed", "timeout")
    raise AssertionError("every order ends with all four arrived")


def describe(event: Event) -> tuple[str, str]:
    """(type, reason) of a terminal event."""
    return type(event).__name__, getattr(event, "reason", "")


OUTCOME_CASES = [(True, True), (False, True), (True, False), (False, False)]


@pytest.mark.parametrize(("email_ok", "slack_ok"), OUTCOME_CASES)
def test_every_order_of_outcomes_and_deadline_ends_once(
    backend: Backend, run: Run[None], email_ok: bool, slack_ok: bool
) -> None:
    """For all 6 orders of the two outcomes and the deadline (after the saga entry), and for
    all 24 orders with the saga entry anywhere, exactly one terminal event is appended, the
    one the order calls for; delivering everything a second time changes nothing."""
    client = backend.client()
    sub = Subsystem("notification", client)
    harness = Harness(client)

    async def scenario() -> None:
        orders = list(itertools.permutations(ARRIVALS))
        assert 24 == len(orders)
        assert 6 == len([o for o in orders if o[0] == "start"])
        for number, order in enumerate(orders):
            flow = Workflow(harness, sub, f"{number + 1}")
            await flow.request(email_ok, slack_ok)
            ids = {name: new_message_id() for name in ARRIVALS}
            for name in order:
                await flow.arrive(name, ids[name])
            ended = terminal(await flow.notification_events())
            assert [expected_end(order, email_ok, slack_ok)] == [describe(e) for e in ended]
            before = (await flow.notification_events(), await flow.saga_events())
            for name in order:  # the same deliveries again, then new copies of each
                await flow.arrive(name, ids[name])
                await flow.arrive(name)
            assert before == (await flow.notification_events(), await flow.saga_events())
            completions = [e for e in before[1] if isinstance(e, SagaEnded)]
            assert 1 == len(completions), order

    run(scenario())


def test_racing_arrivals_end_once(backend: Backend, run: Run[None]) -> None:
    """Outcomes and the deadline handled at the same time (as bots of different concerns
    would) still end each notification exactly once; the losers of each race rerun and find
    the saga settled."""
    client = backend.client()
    sub = Subsystem("notification", client)
    harness = Harness(client)

    async def scenario() -> None:
        for number in range(8):
            flow = Workflow(harness, sub, f"race-{number}")
            await flow.request(email_ok=number % 2 == 0, slack_ok=True)
            await flow.arrive("start")
            await asyncio.gather(*(flow.arrive(n) for n in ("email", "slack", "deadline")))
            assert 1 == len(terminal(await flow.notification_events()))
            saga_events = await flow.saga_events()
            assert 1 == len([e for e in saga_events if isinstance(e, SagaEnded)])

    run(scenario())


def test_deadline_names_what_arrived_and_what_did_not(backend: Backend, run: Run[None]) -> None:
    """A timeout names the channel that never reported as missing and keeps the one that
    succeeded; the late outcome after it is a no-op."""
    client = backend.client()
    sub = Subsystem("notification", client)

    async def scenario() -> None:
        flow = Workflow(Harness(client), sub, "late")
        await flow.request(email_ok=True, slack_ok=True)
        for name in ("start", "email", "deadline", "slack"):
            await flow.arrive(name)
        ended = terminal(await flow.notification_events())
        assert 1 == len(ended)
        failed = ended[0]
        assert isinstance(failed, NotificationFailed)
        assert ("timeout", ("email",), ("slack",), {}) == (
            failed.reason, failed.succeeded, failed.missing, failed.failed
        )  # fmt: skip

    run(scenario())


def test_channels_failed_names_failed_and_succeeded(backend: Backend, run: Run[None]) -> None:
    """When one channel fails, the failure names it with its error and the succeeded one."""
    client = backend.client()
    sub = Subsystem("notification", client)

    async def scenario() -> None:
        flow = Workflow(Harness(client), sub, "half")
        await flow.request(email_ok=False, slack_ok=True)
        for name in ("start", "slack", "email"):
            await flow.arrive(name)
        ended = terminal(await flow.notification_events())
        assert 1 == len(ended)
        failed = ended[0]
        assert isinstance(failed, NotificationFailed)
        assert ("channels-failed", {"email": "SMTP 550 no such mailbox"}, ("slack",)) == (
            failed.reason, failed.failed, failed.succeeded
        )  # fmt: skip

    run(scenario())


@pytest.mark.parametrize(
    ("recipient", "targets", "ending"),
    [
        ("alice", {"email/client-ops", "slack/client-ops"}, None),
        ("bob", {"email/client-ops"}, None),
        ("carol", {"slack/client-ops"}, None),
        ("dave", set(), NotificationSuppressed),
        ("nobody", set(), NotificationFailed),
    ],
)
def test_notification_bot_follows_preferences(
    backend: Backend, run: Run[None], recipient: str, targets: set[str], ending: type | None
) -> None:
    """Both, email only, Slack only: one send operation per preferred channel, tagged with
    the address, and a saga awaiting exactly those with a parked deadline; opted out of all:
    suppressed at once, nothing sent; unknown entity: failed at once."""
    client = backend.client()
    sub = Subsystem("notification", client)

    async def scenario() -> None:
        op = SendNotification(notification_id="7", recipient=recipient, subject="s", body="b")
        ctx = await Harness(client).handle(notify.request_notification, op, object_id="7")
        put = puts(ctx)
        sends = {t for t in put if t in ("email/client-ops", "slack/client-ops")}
        assert targets == sends
        events = await events_of(sub, "7")
        if ending is not None:
            assert [ending] == [type(e) for e in terminal(events)]
            assert {} == {t: p for t, p in put.items()}
            return
        assert [] == terminal(events)
        entry = saga_start_of(put["notification/sagas"][0])
        sent_ids = {p.envelope.message_id: t.split("/")[0] for t in sends for p in put[t]}
        assert sent_ids == entry.awaited
        assert {operation_id(saga_id("7"), label) for label in sent_ids.values()} == set(sent_ids)
        deadline = put["notification/internal-ops"][0]
        assert entry.deadline_ms == deadline.due_ms
        for target in sends:
            tags = dict(put[target][0].envelope.tags)
            message = app.types.of_name(put[target][0].envelope.type).cls
            assert message in (SendEmail, SendSlackMessage)
            assert "7" == tags["notification"]
            assert ("to" in tags) == (target == "email/client-ops")
            assert ("channel" in tags) == (target == "slack/client-ops")

    run(scenario())


def test_saga_settles_sent_when_all_succeed(backend: Backend, run: Run[None]) -> None:
    """Both outcomes succeeded: NotificationSent names both channels; the saga completed
    with result "sent" and the notification's status is sent."""
    client = backend.client()
    sub = Subsystem("notification", client)

    async def scenario() -> None:
        flow = Workflow(Harness(client), sub, "ok")
        await flow.request(email_ok=True, slack_ok=True)
        for name in ("email", "start", "slack"):
            await flow.arrive(name)
        ended = terminal(await flow.notification_events())
        assert [NotificationSent(notification_id="ok", channels=("email", "slack"),
                                 at_ms=ended[0].at_ms)] == ended  # type: ignore[attr-defined]  # fmt: skip
        state = await sub.aggregates(SagaState).load(saga_id("ok"))
        notification = await sub.aggregates(Notification).load("ok")
        assert (True, "succeeded", "sent") == (state.ended, state.result, notification.status)

    run(scenario())


def test_fake_senders_succeed_without_network(backend: Backend, run: Run[None]) -> None:
    """With fake senders (the benchmark's hook), the email and Slack bots write their success
    events with no SMTP server or webhook anywhere; a redelivered send writes nothing more."""
    config.configure(config.Config(fake_senders=True, smtp_port=1))
    client = backend.client()
    harness = Harness(client)

    async def scenario() -> None:
        email = SendEmail(delivery_id="1.email", to="a@example.com", subject="s", body="b",
                          notification_id="1")  # fmt: skip
        slack = SendSlackMessage(delivery_id="1.slack", channel="#a", text="t", notification_id="1")
        for fn, op in ((delivery.send_email, email), (delivery.send_slack, slack)):
            await harness.handle(fn, op, object_id=op.delivery_id, message_id="m1")
            await harness.handle(fn, op, object_id=op.delivery_id, message_id="m1")
        sent = [await events_of(Subsystem(s, client), f"1.{s}") for s in ("email", "slack")]
        assert [[EmailSent], [SlackMessageSent]] == [[type(e) for e in x] for x in sent]
        await harness.close()

    run(scenario())


def test_unreachable_smtp_is_retried_then_failed(backend: Backend, run: Run[None]) -> None:
    """A refused SMTP connection asks the bot to retry (with backoff) until the last of
    ``send_attempts``, which writes EmailFailed saying it gave up, tagged with the address."""
    config.configure(config.Config(smtp_port=1, send_attempts=2, retry_delay=0.25))
    client = backend.client()
    harness = Harness(client)
    op = SendEmail(delivery_id="2.email", to="b@example.com", subject="s", body="b",
                   notification_id="2")  # fmt: skip

    async def scenario() -> None:
        with pytest.raises(Retry) as asked:
            await harness.handle(delivery.send_email, op, object_id=op.delivery_id, attempt=1)
        assert 0.25 == asked.value.delay
        await harness.handle(delivery.send_email, op, object_id=op.delivery_id, attempt=2)
        records = await Subsystem("email", client).reader("events").by_tag("to", "b@example.com")
        assert [EmailFailed] == [type(r.message) for r in records]
        failed = records[0].message
        assert isinstance(failed, EmailFailed)
        assert "unreachable" in failed.error and "gave up after 2 attempts" in failed.error
        await harness.close()

    run(scenario())
