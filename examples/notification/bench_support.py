"""Hooks for the benchmark (issue 5): run the whole workflow with senders that need no network.

In bot processes set ``NOTIFICATION_FAKE_SENDERS=1``; in this process call
``use_fake_senders()``. Either way every email and Slack message "succeeds" at once, so a
benchmark measures the framework (streams, bots, saga, projections), not an SMTP server.
"""

from __future__ import annotations

from dataclasses import dataclass

from examples.notification.messages import SendEmail, SendSlackMessage
from examples.notification.senders import use_senders

FAKE_SENDERS_ENV = {"NOTIFICATION_FAKE_SENDERS": "1"}
"""Environment to give bot processes so their senders are the fakes below."""


@dataclass
class FakeEmailSender:
    """Accepts every email; counts them (per process)."""

    sent: int = 0

    async def send_email(self, op: SendEmail, idempotency_key: str) -> None:
        """Succeed without a network."""
        self.sent += 1


@dataclass
class FakeSlackSender:
    """Accepts every Slack message; counts them (per process)."""

    sent: int = 0

    async def send_slack(self, op: SendSlackMessage, idempotency_key: str) -> None:
        """Succeed without a network."""
        self.sent += 1


def use_fake_senders() -> tuple[FakeEmailSender, FakeSlackSender]:
    """Make this process's email and Slack bots succeed without a network; return the fakes."""
    email, slack = FakeEmailSender(), FakeSlackSender()
    use_senders(email, slack)
    return email, slack


__all__ = ["FAKE_SENDERS_ENV", "FakeEmailSender", "FakeSlackSender", "use_fake_senders"]
