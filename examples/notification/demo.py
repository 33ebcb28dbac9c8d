"""``python -m examples.notification demo``: the whole system on this machine, start to end.

Starts a private server (``streams.LocalServer``), an SMTP server that receives mail
(aiosmtpd, refusing ``bounce@example.com`` with 550), an HTTP server standing in for the
Slack webhook (holding requests for ``#slow`` until stopped), the bots of the three
subsystems as ``streamcqrs run`` processes, and the API (uvicorn on 127.0.0.1, a free
port). Then, through the API, it asks for a handful of notifications: sent on both channels,
on email only, on Slack only, to someone opted out of everything, one whose email bounces and
one whose Slack call hangs past its deadline, and one request retried with the same
idempotency key. It prints each view, the audit trail of a failed one, and what the SMTP
server and the webhook received; stops everything; and exits 0 if every notification ended
as it should (1 otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from examples.notification.api import create_api
from examples.notification.receivers import SlackStandIn, SmtpReceiver
from streamcqrs.streams import LocalServer

APP = "examples.notification.app:app"
SUBSYSTEMS = ("notification", "email", "slack")


@dataclass(frozen=True, slots=True)
class Case:
    """One notification the demo asks for, and how it must end."""

    title: str
    recipient: str
    status: str
    reason: str | None = None
    deadline_seconds: float | None = None


CASES = (
    Case("email and Slack", "alice", "sent"),
    Case("email only", "bob", "sent"),
    Case("Slack only", "carol", "sent"),
    Case("opted out of every channel", "dave", "suppressed"),
    Case("the email bounces (550)", "mallory", "failed", "channels-failed"),
    Case("Slack hangs past a 3 s deadline", "erin", "failed", "timeout", deadline_seconds=3.0),
)


def say(text: str = "") -> None:
    """Print a line of the demo's story at once."""
    print(text, flush=True)


def bot_command(subsystem: str, grace: float) -> list[str]:
    """The command line of one subsystem's bots."""
    return [
        sys.executable, "-m", "streamcqrs", "run", APP, "--only", subsystem,
        "--grace", str(grace), "--log-level", "warning", "--log-format", "json",
    ]  # fmt: skip


@contextmanager
def bot_processes(env: dict[str, str], log: Path, grace: float = 2.0) -> Iterator[list[Any]]:
    """The three subsystems' bots as ``streamcqrs run`` processes, stopped on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    with log.open("ab") as out:
        try:
            for subsystem in SUBSYSTEMS:
                procs.append(
                    subprocess.Popen(
                        bot_command(subsystem, grace),
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,  # its workers die with it (killpg below)
                    )
                )
            yield procs
        finally:
            stop_processes(procs, grace + 5)


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM each (the supervisor drains its workers); SIGKILL the group of a straggler."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextmanager
def api_server(url: str, *, asgi: Any = None) -> Iterator[str]:
    """The API (or another ASGI app, ``asgi``) under uvicorn on 127.0.0.1 on a free port, in a
    thread; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(asgi or create_api(url), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(check: Callable[[], Any], timeout: float, pause: float = 0.1) -> Any:
    """Call ``check`` until it returns something truthy or ``timeout`` passes; return that."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(pause)


def final_view(http: httpx.Client, nid: str, timeout: float) -> dict[str, Any] | None:
    """The notification's view once it ended (and, if it failed, was reported), or None."""

    def ended() -> dict[str, Any] | None:
        reply = http.get(f"/notifications/{nid}")
        if reply.status_code != 200:
            return None
        view: dict[str, Any] = reply.json()
        if view["status"] == "failed" and not view["reported_to_team_at"]:
            return None
        return view if view["status"] in ("sent", "failed", "suppressed") else None

    found: dict[str, Any] | None = wait_for(ended, timeout)
    return found


def ask(http: httpx.Client) -> tuple[list[tuple[Case, str]], bool]:
    """Ask for every case's notification, and one request twice with one idempotency key.

    Returns the cases with their tracking ids, and whether the retried request got one id.
    """
    ids: list[tuple[Case, str]] = []
    for case in CASES:
        body: dict[str, Any] = {
            "recipient": case.recipient,
            "subject": case.title,
            "body": f"Hello {case.recipient}: {case.title}.",
        }
        if case.deadline_seconds:
            body["deadline_seconds"] = case.deadline_seconds
        reply = http.post("/notifications", json=body)
        reply.raise_for_status()
        ids.append((case, reply.json()["id"]))
        say(f"POST /notifications {case.recipient:8} -> id {ids[-1][1]} ({case.title})")
    retry = {"recipient": "alice", "subject": "retried request", "body": "once"}
    key = {"Idempotency-Key": "k-1"}
    first = http.post("/notifications", json=retry, headers=key).json()["id"]
    again = http.post("/notifications", json=retry, headers=key).json()["id"]
    say(f"same Idempotency-Key twice -> ids {first} and {again}")
    ids.append((Case("retried request", "alice", "sent"), first))
    return ids, first == again


def show(http: httpx.Client, ids: list[tuple[Case, str]], timeout: float) -> bool:
    """Print each notification's final view and an audit trail; True if all ended right."""
    ok = True
    started = time.monotonic()
    for case, nid in ids:
        view = final_view(http, nid, max(1.0, timeout - (time.monotonic() - started)))
        good = view is not None and view["status"] == case.status
        good &= case.reason is None or (view or {}).get("reason") == case.reason
        ok &= good
        expected = case.status + (f" / {case.reason}" if case.reason else "")
        verdict = "ok" if good else "WRONG"
        say(f"GET /notifications/{nid}  ({case.title}: expected {expected}) {verdict}")
        say(json.dumps(view, indent=2) if view else "  (no final view in time)")
    failed_id = next(nid for case, nid in ids if case.recipient == "mallory")
    say(f"\naudit: GET /notifications/{failed_id}/events")
    for event in http.get(f"/notifications/{failed_id}/events").json():
        say(f"  v{event['version']} {event['type']}  {json.dumps(event['data'])}")
    listed = http.get("/notifications", params={"email": "alice@example.com"}).json()
    say(f"\nGET /notifications?email=alice@example.com -> {[v['id'] for v in listed]}")
    return ok


def bot_env(url: str, smtp: SmtpReceiver, slack: SlackStandIn) -> dict[str, str]:
    """The environment of the bot processes: the server, the SMTP server, the webhook."""
    return {
        **os.environ,
        "REDIS_URL": url,
        "NOTIFICATION_SMTP_HOST": "127.0.0.1",
        "NOTIFICATION_SMTP_PORT": str(smtp.port),
        "NOTIFICATION_SLACK_WEBHOOK_URL": slack.url,
        "NOTIFICATION_SLACK_TIMEOUT": "2",
        "NOTIFICATION_DEADLINE": "30",
        "NOTIFICATION_RETRY_DELAY": "0.3",
    }


def run_demo(*, timeout: float = 45.0, url: str | None = None) -> int:
    """Run the demo (see the module docstring); return the exit status."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="notification-demo-"))
    log = workdir / "bots.log"
    with ExitStack() as stack:
        if url is None:
            url = stack.enter_context(LocalServer()).url
        smtp = stack.enter_context(SmtpReceiver(reject={"bounce@example.com"}))
        slack = stack.enter_context(SlackStandIn(hang={"#slow"}))
        say(f"server {url}; SMTP on 127.0.0.1:{smtp.port}; Slack webhook {slack.url}")
        stack.enter_context(bot_processes(bot_env(url, smtp, slack), log))
        say(f"bots: {', '.join(SUBSYSTEMS)} (streamcqrs run {APP} --only ...); log {log}")
        base = stack.enter_context(api_server(url))
        say(f"API {base}")
        # Stop the webhook stand-in before the bots (ExitStack unwinds in reverse): a request
        # it holds is released at once instead of waiting out the bots' grace period.
        stack.callback(slack.stop)
        with httpx.Client(base_url=base, timeout=10) as http:
            ids, once = ask(http)
            say()
            ok = show(http, ids, timeout - (time.monotonic() - started)) and once
        say("\nSMTP server received:")
        for mail in smtp.messages:
            say(f"  to {', '.join(mail.recipients)}: {mail.subject}")
        say("Slack webhook received:")
        for post in slack.posts:
            say(f"  {post.body['channel']}: {post.body['text'].splitlines()[0]}")
    outcome = "all notifications ended as expected" if ok else "SOME NOTIFICATIONS WENT WRONG"
    say(f"\n{outcome} in {time.monotonic() - started:.1f} s")
    if not ok:
        say(f"bot log: {log}")
        say(log.read_text(errors="replace")[-4000:])
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


__all__ = ["CASES", "Case", "run_demo"]
