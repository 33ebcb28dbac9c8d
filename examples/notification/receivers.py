"""Local stand-ins for the outside world: an SMTP server that receives mail, a Slack webhook.

The demo and the acceptance tests point the bots at these, so every email really goes over
SMTP (to aiosmtpd) and every Slack message really is an HTTP POST. Both listen on 127.0.0.1
on a free port, keep what they received, and can be told to misbehave for chosen addresses:

* ``SmtpReceiver(reject={"bounce@example.com"})`` answers RCPT TO with 550 for that address;
* ``SlackStandIn(fail={"#gone": 404}, hang={"#slow"})`` answers 404 ``channel_not_found``
  for one channel and holds requests for another until it is stopped (or ``hang_seconds``).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

from aiosmtpd.controller import Controller

T = TypeVar("T")


class _Inbox(Generic[T]):
    """Items received on server threads, and a way to wait for them."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._changed = threading.Condition()

    def add(self, item: T) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def items(self) -> list[T]:
        with self._changed:
            return list(self._items)

    def wait_for(
        self, match: Callable[[T], bool], count: int = 1, timeout: float = 10.0
    ) -> list[T]:
        """Wait until ``count`` received items match; return the matching ones (maybe fewer)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [item for item in self._items if match(item)]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    return found
                self._changed.wait(left)


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """One email the SMTP receiver accepted."""

    sender: str
    recipients: tuple[str, ...]
    subject: str
    message_id: str
    body: str


class _SmtpHandler:
    """aiosmtpd handler: refuse chosen recipients with 550, keep every accepted message."""

    def __init__(self, reject: Collection[str], inbox: _Inbox[ReceivedMail]) -> None:
        self.reject = {address.lower() for address in reject}
        self.inbox = inbox

    async def handle_RCPT(  # noqa: N802 - the name aiosmtpd calls
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self.reject:
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        mail = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = mail.get_body(("plain",))
        self.inbox.add(
            ReceivedMail(
                sender=str(envelope.mail_from),
                recipients=tuple(envelope.rcpt_tos),
                subject=str(mail.get("Subject", "")),
                message_id=str(mail.get("Message-ID", "")),
                body=body.get_content() if body is not None else "",
            )
        )
        return "250 Message accepted for delivery"


class _AnyPortController(Controller):
    """aiosmtpd's Controller, able to listen on port 0 (a free port the system picks)."""

    def _trigger_server(self) -> None:
        # The server is bound by now; learn its real port before the controller connects.
        server = self.server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]  # untyped in aiosmtpd


class SmtpReceiver:
    """A real SMTP server on 127.0.0.1 that keeps the mail it accepts."""

    def __init__(self, *, reject: Collection[str] = (), host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self.inbox: _Inbox[ReceivedMail] = _Inbox()
        self._controller = _AnyPortController(
            _SmtpHandler(reject, self.inbox), hostname=host, port=port,
            server_hostname="localhost",  # skip a slow reverse lookup of the host name
        )  # fmt: skip

    def start(self) -> SmtpReceiver:
        """Start listening; ``port`` is the real port afterwards."""
        self._controller.start()
        self.port = int(self._controller.port)
        return self

    def stop(self) -> None:
        """Stop listening."""
        self._controller.stop(no_assert=True)

    @property
    def messages(self) -> list[ReceivedMail]:
        """Every email accepted so far, in order."""
        return self.inbox.items()

    def wait_for(self, to: str, count: int = 1, timeout: float = 10.0) -> list[ReceivedMail]:
        """Wait until ``count`` emails to ``to`` arrived (or ``timeout``); return them."""
        return self.inbox.wait_for(lambda m: to in m.recipients, count, timeout)

    def __enter__(self) -> SmtpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class ReceivedPost:
    """One webhook call the Slack stand-in answered with 200."""

    path: str
    body: dict[str, Any]
    idempotency_key: str
    peer: tuple[str, int] = ("", 0)
    """The caller's address and port: one kept-alive connection is one peer."""


class SlackStandIn:
    """An HTTP server on 127.0.0.1 standing in for a Slack incoming webhook."""

    PATH = "/services/T000/B000/local"

    def __init__(
        self,
        *,
        fail: Mapping[str, int] | None = None,
        hang: Collection[str] = (),
        hang_seconds: float = 30.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.fail = dict(fail or {})
        self.hang = set(hang)
        self.hang_seconds = hang_seconds
        self.inbox: _Inbox[ReceivedPost] = _Inbox()
        self.hung = _Inbox[str]()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The webhook URL to configure the Slack bot with."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self.PATH}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps connections alive, as Slack's servers do

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError:
                    body = None
                if self.path != stand_in.PATH or not isinstance(body, dict):
                    self._reply(HTTPStatus.BAD_REQUEST, "invalid_payload")
                    return
                channel = str(body.get("channel", ""))
                if channel in stand_in.hang:
                    stand_in.hung.add(channel)
                    stand_in._stopping.wait(stand_in.hang_seconds)
                    self._reply(HTTPStatus.SERVICE_UNAVAILABLE, "too late")
                    return
                if channel in stand_in.fail:
                    self._reply(HTTPStatus(stand_in.fail[channel]), "channel_not_found")
                    return
                key = self.headers.get("X-Idempotency-Key", "")
                peer = (str(self.client_address[0]), int(self.client_address[1]))
                stand_in.inbox.add(ReceivedPost(self.path, body, key, peer))
                self._reply(HTTPStatus.OK, "ok")

            def _reply(self, status: HTTPStatus, text: str) -> None:
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the caller gave up (timed out) while we held the request

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the demo prints what matters

        return Handler

    def start(self) -> SlackStandIn:
        """Start serving in a thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release held requests and stop serving (again: nothing)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def posts(self) -> list[ReceivedPost]:
        """Every call answered with 200 so far, in order."""
        return self.inbox.items()

    def wait_for(self, channel: str, count: int = 1, timeout: float = 10.0) -> list[ReceivedPost]:
        """Wait until ``count`` messages for ``channel`` arrived (or ``timeout``); return them."""
        return self.inbox.wait_for(lambda p: p.body.get("channel") == channel, count, timeout)

    def __enter__(self) -> SlackStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["ReceivedMail", "ReceivedPost", "SlackStandIn", "SmtpReceiver"]
