"""Acceptance tests of the notification example: the real thing, end to end.

One private server, one SMTP server that receives mail (aiosmtpd; 550 for the bounce
addresses), one HTTP server standing in for the Slack webhook (404 for ``#gone``, holding
``#slow``), the three subsystems' bots as ``streamcqrs run`` processes, and the API under
uvicorn. Each test asks for a notification over HTTP and awaits its view on the views stream.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from examples.notification.demo import api_server, bot_processes
from examples.notification.messages import (
    TERMINAL_EVENTS,
    EmailFailed,
    EmailSent,
    SlackMessageFailed,
)
from examples.notification.receivers import SlackStandIn, SmtpReceiver
from streamcqrs.domain import Event
from streamcqrs.streams import LocalServer, Record, Subsystem
from tests.support import async_client, sync_client

TEAM = "team@example.com"
DIRECTORY = {
    "ann": {"email": "ann@example.com", "slack_channel": "#ann", "preference": "both"},
    "eve": {"email": "bounce@example.com", "slack_channel": "#eve", "preference": "both"},
    "sam": {"email": "sam@example.com", "slack_channel": "#gone", "preference": "both"},
    "bo": {"email": "bounce2@example.com", "slack_channel": "#gone", "preference": "both"},
    "quiet": {"email": "quiet@example.com", "slack_channel": "#quiet", "preference": "none"},
    "slow": {"email": "slow@example.com", "slack_channel": "#slow", "preference": "both"},
    "idem": {"email": "idem@example.com", "preference": "email"},
    "reb": {"email": "reb@example.com", "slack_channel": "#reb", "preference": "both"},
}


@dataclass
class System:
    """Everything running for the tests, and ways to talk to it."""

    url: str
    smtp: SmtpReceiver
    slack: SlackStandIn
    http: httpx.Client
    log: Path

    def post(self, recipient: str, subject: str, body: str = "", **extra: Any) -> str:
        """Ask for a notification through the API; return its tracking id."""
        payload = {"recipient": recipient, "subject": subject, "body": body, **extra}
        reply = self.http.post("/notifications", json=payload)
        assert 202 == reply.status_code, reply.text
        nid: str = reply.json()["id"]
        return nid

    def final(self, nid: str, *, reported: bool = False, timeout: float = 20) -> dict[str, Any]:
        """The view once the notification ended (and, with ``reported``, was reported)."""

        def done(view: dict[str, Any]) -> bool:
            ended = view["status"] in ("sent", "failed", "suppressed")
            return ended and (not reported or bool(view["reported_to_team_at"]))

        ok, last = asyncio.run(await_view(self.url, nid, done, timeout))
        if not ok or last is None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"view of {nid} not final in {timeout}s: {last}\n{tail}")
        return last

    def events(self, nid: str) -> list[dict[str, Any]]:
        """The notification's events through the API."""
        reply = self.http.get(f"/notifications/{nid}/events")
        assert 200 == reply.status_code, reply.text
        found: list[dict[str, Any]] = reply.json()
        return found

    def records(self, subsystem: str, kind: str, tag: str, value: str) -> list[Record]:
        """Records of one stream carrying a tag."""

        async def read() -> list[Record]:
            client = async_client(self.url)
            try:
                return await Subsystem(subsystem, client).reader(kind).by_tag(tag, value)
            finally:
                await client.aclose()

        return asyncio.run(read())


async def await_view(
    url: str, nid: str, done: Callable[[dict[str, Any]], bool], within: float
) -> tuple[bool, dict[str, Any] | None]:
    """Follow the views stream until ``nid``'s view satisfies ``done`` (at most ``within``
    seconds); return whether it did, and the last view seen."""
    client = async_client(url)
    views = Subsystem("notification", client).reader("views")
    last: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(within):
            async for record in views.subscribe(after="0", block_ms=200):
                if record.object_id == nid:
                    last = orjson.loads(record.raw)
                    if done(last):
                        return True, last
    except TimeoutError:
        pass
    finally:
        await client.aclose()
    return False, last


async def await_record(
    url: str, subsystem: str, match: Callable[[Record], bool], within: float = 15
) -> Record:
    """Follow ``subsystem``'s events until a record matches; fail after ``within`` s."""
    client = async_client(url)
    try:
        async with asyncio.timeout(within):
            events = Subsystem(subsystem, client).reader("events")
            async for record in events.subscribe(after="0", block_ms=200):
                if match(record):
                    return record
    finally:
        await client.aclose()
    raise AssertionError("unreachable: subscribe ends only by timeout")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """Server, receivers, bots and API, up for the whole module and stopped after it."""
    workdir = tmp_path_factory.mktemp("notification")
    directory = workdir / "directory.json"
    directory.write_text(json.dumps(DIRECTORY))
    log = workdir / "bots.log"
    with ExitStack() as stack:
        server = stack.enter_context(LocalServer())
        smtp = stack.enter_context(SmtpReceiver(reject={"bounce@example.com",
                                                        "bounce2@example.com"}))  # fmt: skip
        slack = stack.enter_context(SlackStandIn(fail={"#gone": 404}, hang={"#slow"},
                                                 hang_seconds=20))  # fmt: skip
        env = {
            "REDIS_URL": server.url,
            "PATH": "/usr/bin:/bin",
            "NOTIFICATION_SMTP_PORT": str(smtp.port),
            "NOTIFICATION_SLACK_WEBHOOK_URL": slack.url,
            "NOTIFICATION_SLACK_TIMEOUT": "1",
            "NOTIFICATION_SEND_ATTEMPTS": "2",
            "NOTIFICATION_RETRY_DELAY": "0.2",
            "NOTIFICATION_DEADLINE": "20",
            "NOTIFICATION_SNAPSHOT_EVERY": "2",
            "NOTIFICATION_TEAM_EMAIL": TEAM,
            "NOTIFICATION_DIRECTORY": str(directory),
        }
        stack.enter_context(bot_processes(env, log))
        base = stack.enter_context(api_server(server.url))
        stack.callback(slack.stop)  # release held requests before the bots stop
        http = stack.enter_context(httpx.Client(base_url=base, timeout=10))
        yield System(server.url, smtp, slack, http, log)


def types(events: list[dict[str, Any]]) -> list[str]:
    """The type names of events as the API lists them."""
    return [e["type"].removeprefix("notification.") for e in events]


def test_sent_on_both_channels(system: System) -> None:
    """A recipient preferring both gets a real email (right recipient, subject, body, the
    operation id as Message-ID) and a webhook POST with the right body; the view says sent
    on both; the audit trail is requested then sent; the email's event is found by tag."""
    nid = system.post("ann", "Deploy finished", "v2 is live")
    view = system.final(nid)
    assert ("sent", None, {}) == (view["status"], view["reason"], view["errors"])
    assert {"email": ("ann@example.com", "sent"), "slack": ("#ann", "sent")} == {
        c: (v["address"], v["outcome"]) for c, v in view["channels"].items()
    }
    mails = system.smtp.wait_for("ann@example.com")
    assert [(("ann@example.com",), "Deploy finished", "v2 is live")] == [
        (m.recipients, m.subject, m.body.strip()) for m in mails
    ]
    assert mails[0].message_id.endswith("@notification.streamcqrs>")
    posts = system.slack.wait_for("#ann")
    assert [{"channel": "#ann", "text": "*Deploy finished*\nv2 is live"}] == [p.body for p in posts]
    assert ["NotificationRequested", "NotificationSent"] == types(system.events(nid))
    sent = system.records("email", "events", "to", "ann@example.com")
    assert [EmailSent] == [type(r.message) for r in sent]
    assert ("to", "ann@example.com") in sent[0].envelope.tags


def test_email_fails_and_the_team_is_told(system: System) -> None:
    """SMTP refuses the address with 550: EmailFailed (with the error, tagged with the
    address), NotificationFailed naming email as failed and Slack as succeeded, then an email
    to the internal team and FailureReportedToInternalTeam."""
    nid = system.post("eve", "Invoice ready")
    view = system.final(nid, reported=True)
    assert ("failed", "channels-failed") == (view["status"], view["reason"])
    assert "550" in view["errors"]["email"]
    assert ("failed", "sent") == tuple(view["channels"][c]["outcome"] for c in ("email", "slack"))
    failed = system.records("email", "events", "to", "bounce@example.com")
    assert [EmailFailed] == [type(r.message) for r in failed]
    assert "550" in failed[0].message.error  # type: ignore[union-attr]
    reports = system.smtp.wait_for(TEAM, count=1, timeout=10)
    assert f"[notification {nid}] failed: channels-failed" in [m.subject for m in reports]
    assert ["NotificationRequested", "NotificationFailed", "FailureReportedToInternalTeam"] == (
        types(system.events(nid))
    )


def test_slack_fails(system: System) -> None:
    """The webhook answers 404 channel_not_found: the email still goes out, the notification
    fails naming Slack with the webhook's answer."""
    nid = system.post("sam", "Standup moved")
    view = system.final(nid)
    assert ("failed", "channels-failed") == (view["status"], view["reason"])
    assert "404" in view["errors"]["slack"] and "channel_not_found" in view["errors"]["slack"]
    assert ("sent", "failed") == tuple(view["channels"][c]["outcome"] for c in ("email", "slack"))
    assert 1 == len(system.smtp.wait_for("sam@example.com"))


def test_both_fail(system: System) -> None:
    """Both channels refuse: the failure names both, and nothing succeeded."""
    nid = system.post("bo", "Both broken")
    view = system.final(nid)
    assert ("failed", "channels-failed") == (view["status"], view["reason"])
    assert ["email", "slack"] == sorted(view["errors"])
    assert ("failed", "failed") == tuple(view["channels"][c]["outcome"] for c in ("email", "slack"))


def test_opted_out_of_everything(system: System) -> None:
    """Opted out of all channels: suppressed at once; no send operation was ever put."""
    nid = system.post("quiet", "You won't see this")
    view = system.final(nid)
    assert ("suppressed", {}) == (view["status"], view["channels"])
    assert [] == system.records("email", "client-ops", "notification", nid)
    assert [] == system.records("slack", "client-ops", "notification", nid)
    assert ["NotificationRequested", "NotificationSuppressed"] == types(system.events(nid))


def test_timeout_when_slack_hangs(system: System) -> None:
    """The webhook holds the request past the notification's deadline: NotificationFailed
    for timeout names Slack as missing and email as succeeded; the Slack failure arriving
    later changes nothing (still exactly one terminal event)."""
    nid = system.post("slow", "Slow channel", deadline_seconds=1.5)
    view = system.final(nid)
    assert ("failed", "timeout") == (view["status"], view["reason"])
    assert {"email": "sent", "slack": "timed-out"} == {
        c: v["outcome"] for c, v in view["channels"].items()
    }
    assert ["#slow"] == system.slack.hung.items()[:1]
    # The Slack bot gives up after 2 tries of 1 s each and writes its failure, too late.
    late = asyncio.run(await_record(system.url, "slack", lambda r: r.object_id == f"{nid}.slack"))
    assert isinstance(late.message, SlackMessageFailed)
    terminal = [t for t in types(system.events(nid)) if t.startswith("Notification")]
    assert ["NotificationRequested", "NotificationFailed"] == terminal


def test_same_idempotency_key_twice_makes_one_notification(system: System) -> None:
    """Two requests with one Idempotency-Key get one tracking id, one operation, one email."""
    body = {"recipient": "idem", "subject": "Once only", "body": "x"}
    headers = {"Idempotency-Key": "order-42"}
    ids = {system.http.post("/notifications", json=body, headers=headers).json()["id"]
           for _ in range(2)}  # fmt: skip
    assert 1 == len(ids)
    nid = ids.pop()
    assert "sent" == system.final(nid)["status"]
    assert 1 == len(system.records("email", "client-ops", "to", "idem@example.com"))
    assert [("idem@example.com",)] == [
        m.recipients for m in system.smtp.wait_for("idem@example.com")
    ]


def test_rebuild_views_from_events(system: System) -> None:
    """With the views stream gone, ``rebuild-views`` writes every view again from events
    alone, byte for byte what the projection had written."""
    done = [system.post("reb", "Rebuild me"), system.post("eve", "Rebuild me too")]
    system.final(done[0])
    system.final(done[1], reported=True)
    before = {nid: system.http.get(f"/notifications/{nid}").content for nid in done}
    with sync_client(system.url) as admin:
        gone = [k for k in admin.scan_iter(match="{notification.*}:views*")]
        admin.delete(*gone)
    assert 404 == system.http.get(f"/notifications/{done[0]}").status_code
    command = [sys.executable, "-m", "examples.notification", "rebuild-views", "--url",
               system.url]  # fmt: skip
    rebuilt = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert 0 == rebuilt.returncode, rebuilt.stderr
    assert rebuilt.stdout.startswith("rebuilt ")
    assert before == {nid: system.http.get(f"/notifications/{nid}").content for nid in done}
    listed = system.http.get("/notifications", params={"email": "reb@example.com"}).json()
    assert [done[0]] == [v["id"] for v in listed]


def test_snapshots_every_n_events(system: System) -> None:
    """With a snapshot every 2 events, a sent notification (2 events) has a snapshot whose
    state says sent, and its saga (4 events) has one too."""
    nid = system.post("ann", "Snapshot me")
    system.final(nid)

    async def latest() -> tuple[Record | None, Record | None]:
        client = async_client(system.url)
        try:
            snapshots = Subsystem("notification", client).reader("snapshots")
            return await snapshots.latest(nid), await snapshots.latest(f"{nid}.saga")
        finally:
            await client.aclose()

    notification, saga = asyncio.run(latest())
    assert notification is not None and saga is not None
    assert ("sent", 2) == (
        orjson.loads(notification.raw)["state"]["status"],
        orjson.loads(notification.raw)["state"]["version"],
    )
    assert (True, 4) == (
        orjson.loads(saga.raw)["state"]["ended"],
        orjson.loads(saga.raw)["state"]["version"],
    )


def test_every_notification_has_exactly_one_terminal_event(system: System) -> None:
    """Across everything the module asked for, each notification has one terminal event."""

    async def count() -> dict[str, int]:
        client = async_client(system.url)
        try:
            records = await Subsystem("notification", client).reader("events").read()
        finally:
            await client.aclose()
        ends: dict[str, int] = {}
        for r in records:
            if isinstance(r.message, Event) and not r.object_id.endswith(".saga"):
                ends[r.object_id] = ends.get(r.object_id, 0) + isinstance(
                    r.message, TERMINAL_EVENTS
                )
        return ends

    ends = asyncio.run(count())
    assert ends, "the earlier tests asked for notifications"
    assert dict.fromkeys(ends, 1) == ends
