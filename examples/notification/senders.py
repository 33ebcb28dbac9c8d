"""The outside world: sending email over SMTP and posting to a Slack incoming webhook.

A sender raises ``SendFailure`` when it could not deliver, saying whether trying again could
help (``permanent=False``: connection refused, timeout, 4xx SMTP reply, 5xx HTTP) or not
(``permanent=True``: 5xx SMTP reply such as 550 unknown mailbox, 4xx HTTP such as 404
channel_not_found). The bots turn that into a retry or a failure event.

The senders are made once per bot process, in the app's startup hook (``open_senders``,
declared in ``app.py``), and handed to the handlers as ``ctx.resources["email"]`` and
``ctx.resources["slack"]``: the Slack sender keeps one ``httpx.AsyncClient`` (one pool of
kept-alive connections) for every post, and the shutdown hook (``close_senders``) closes it.

``use_senders`` swaps in other senders for this process (``bench_support`` has fakes that
succeed without a network); ``NOTIFICATION_FAKE_SENDERS=1`` does the same for bot processes.
Either is read by the startup hook, so set it before the bots start.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from typing import Protocol

import httpx

from examples.notification import config
from examples.notification.messages import SendEmail, SendSlackMessage
from streamcqrs.handlers import Resources


class SendFailure(Exception):
    """A send did not go through; ``permanent`` says that retrying cannot help."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class EmailSender(Protocol):
    """Delivers one email or raises SendFailure."""

    async def send_email(self, op: SendEmail, idempotency_key: str) -> None:
        """Send ``op``; ``idempotency_key`` is the same on every retry of one operation."""
        ...


class SlackSender(Protocol):
    """Posts one Slack message or raises SendFailure."""

    async def send_slack(self, op: SendSlackMessage, idempotency_key: str) -> None:
        """Post ``op``; ``idempotency_key`` is the same on every retry of one operation."""
        ...


class SmtpSender:
    """Sends through a configured SMTP server with the standard library, in a thread."""

    def __init__(self, settings: config.Config) -> None:
        self.settings = settings

    def compose(self, op: SendEmail, idempotency_key: str) -> EmailMessage:
        """The email for ``op``; its Message-ID is the idempotency key, so a receiver can
        recognise a resend of the same operation."""
        mail = EmailMessage()
        mail["From"] = self.settings.smtp_sender
        mail["To"] = op.to
        mail["Subject"] = op.subject
        mail["Message-ID"] = f"<{idempotency_key}@notification.streamcqrs>"
        mail.set_content(op.body)
        return mail

    async def send_email(self, op: SendEmail, idempotency_key: str) -> None:
        """Send over SMTP without blocking the bot's event loop."""
        await asyncio.to_thread(self._send, self.compose(op, idempotency_key))

    def _send(self, mail: EmailMessage) -> None:
        s = self.settings
        try:
            smtp = (
                smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout,
                                 context=ssl.create_default_context())
                if s.smtp_tls == "ssl"
                else smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            )  # fmt: skip
            with smtp:
                if s.smtp_tls == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if s.smtp_user:
                    smtp.login(s.smtp_user, s.smtp_password)
                smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            reply = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
            raise SendFailure(f"SMTP {code} {reply}", permanent=code >= 500) from exc
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error
            reply = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
            permanent = exc.smtp_code >= 500
            raise SendFailure(f"SMTP {exc.smtp_code} {reply}", permanent=permanent) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise SendFailure(
                f"SMTP server {s.smtp_host}:{s.smtp_port} unreachable: {exc}", permanent=False
            ) from exc


class SlackWebhookSender:
    """Posts ``{"channel", "text"}`` JSON to a configured incoming-webhook URL, every post
    through the one ``client`` it was made with (its connections are kept alive)."""

    def __init__(self, settings: config.Config, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client

    async def send_slack(self, op: SendSlackMessage, idempotency_key: str) -> None:
        """POST the message; 2xx is success."""
        url = self.settings.slack_webhook_url
        if not url:
            raise SendFailure(
                f"no Slack webhook configured; set {config.PREFIX}SLACK_WEBHOOK_URL",
                permanent=True,
            )
        body = {"channel": op.channel, "text": op.text}
        headers = {"X-Idempotency-Key": idempotency_key}
        try:
            reply = await self.client.post(url, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            why = f"Slack webhook timed out after {self.settings.slack_timeout:g}s"
            raise SendFailure(why, permanent=False) from exc
        except httpx.HTTPError as exc:
            raise SendFailure(f"Slack webhook unreachable: {exc}", permanent=False) from exc
        if 200 <= reply.status_code < 300:
            return
        # 4xx (bad payload, unknown or archived channel) will not heal; 429 and 5xx may.
        permanent = 400 <= reply.status_code < 500 and reply.status_code != 429
        raise SendFailure(
            f"Slack webhook answered {reply.status_code}: {reply.text[:200]}", permanent=permanent
        )


_override: tuple[EmailSender | None, SlackSender | None] = (None, None)


def use_senders(email: EmailSender | None = None, slack: SlackSender | None = None) -> None:
    """Send through these in this process from now on (None: back to the configured ones)."""
    global _override  # noqa: PLW0603 - the process's senders, swapped by tests and benches
    _override = (email, slack)


def email_sender() -> EmailSender:
    """A new email sender as this process is configured (``use_senders``, fakes, or SMTP)."""
    if _override[0] is not None:
        return _override[0]
    settings = config.current()
    if settings.fake_senders:
        from examples.notification.bench_support import FakeEmailSender

        return FakeEmailSender()
    return SmtpSender(settings)


def slack_sender(client: httpx.AsyncClient) -> SlackSender:
    """A new Slack sender as this process is configured, posting through ``client``."""
    if _override[1] is not None:
        return _override[1]
    settings = config.current()
    if settings.fake_senders:
        from examples.notification.bench_support import FakeSlackSender

        return FakeSlackSender()
    return SlackWebhookSender(settings, client)


async def open_senders(resources: Resources) -> None:
    """Startup hook: the process's senders, and the one HTTP client the Slack one posts with."""
    http = httpx.AsyncClient(timeout=config.current().slack_timeout)
    resources["http"] = http
    resources["email"] = email_sender()
    resources["slack"] = slack_sender(http)


async def close_senders(resources: Resources) -> None:
    """Shutdown hook: close the HTTP client (its kept-alive connections)."""
    http = resources.get("http")
    if isinstance(http, httpx.AsyncClient):
        await http.aclose()


__all__ = [
    "EmailSender",
    "SendFailure",
    "SlackSender",
    "SlackWebhookSender",
    "SmtpSender",
    "close_senders",
    "email_sender",
    "open_senders",
    "slack_sender",
    "use_senders",
]
