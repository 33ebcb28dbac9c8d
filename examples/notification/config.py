"""Settings of the notification example, read from ``NOTIFICATION_*`` environment variables.

Bots are separate processes (``streamcqrs run``), so the environment is how the demo and
the tests tell them where the SMTP server and the Slack webhook are. ``configure`` replaces
the settings in this process (tests that run handlers directly).

=====================================  ======================================  ===============
variable                               meaning                                 default
=====================================  ======================================  ===============
NOTIFICATION_SMTP_HOST / _PORT         SMTP server                             127.0.0.1 / 25
NOTIFICATION_SMTP_TLS                  ``none``, ``starttls`` or ``ssl``       none
NOTIFICATION_SMTP_USER / _PASSWORD     SMTP login (both, or neither)           (none)
NOTIFICATION_SMTP_SENDER               From: address                           notifications@
NOTIFICATION_SMTP_TIMEOUT              seconds per SMTP connection             10
NOTIFICATION_SLACK_WEBHOOK_URL         Slack incoming-webhook URL              (none: fails)
NOTIFICATION_SLACK_TIMEOUT             seconds per webhook call                10
NOTIFICATION_DEADLINE                  seconds a saga waits for outcomes       30
NOTIFICATION_SEND_ATTEMPTS             tries of a transient send failure       3
NOTIFICATION_RETRY_DELAY               seconds before the 2nd try (doubling)   0.5
NOTIFICATION_TEAM_EMAIL                where failures are reported             oncall@
NOTIFICATION_SNAPSHOT_EVERY            snapshot an aggregate every N events    4
NOTIFICATION_DIRECTORY                 JSON file of recipients                 (built in)
NOTIFICATION_FAKE_SENDERS              ``1``: senders succeed without network  0
=====================================  ======================================  ===============
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from examples.notification.directory import Directory, load_directory
from streamcqrs.domain.errors import ConfigurationError

TlsMode = Literal["none", "starttls", "ssl"]
PREFIX = "NOTIFICATION_"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the notification bots need to know about the outside world."""

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_tls: TlsMode = "none"
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_sender: str = "notifications@example.com"
    smtp_timeout: float = 10.0
    slack_webhook_url: str = ""
    slack_timeout: float = 10.0
    deadline: float = 30.0
    send_attempts: int = 3
    """Tries of a send that fails for a passing reason; keep below the bot's --max-attempts
    (default 5), or the bot dead-letters the operation before it can write EmailFailed."""
    retry_delay: float = 0.5
    team_email: str = "oncall@example.com"
    snapshot_every: int = 4
    directory: Directory = field(default_factory=lambda: load_directory(None))
    fake_senders: bool = False

    def __post_init__(self) -> None:
        if self.smtp_tls not in ("none", "starttls", "ssl"):
            raise ConfigurationError(
                f"{PREFIX}SMTP_TLS must be none, starttls or ssl, not {self.smtp_tls!r}"
            )
        if bool(self.smtp_user) != bool(self.smtp_password):
            raise ConfigurationError(
                f"set both {PREFIX}SMTP_USER and {PREFIX}SMTP_PASSWORD, or neither"
            )
        if self.send_attempts < 1 or self.snapshot_every < 1 or self.deadline <= 0:
            raise ConfigurationError(
                f"{PREFIX}SEND_ATTEMPTS and {PREFIX}SNAPSHOT_EVERY must be >= 1 and "
                f"{PREFIX}DEADLINE > 0"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Settings from ``NOTIFICATION_*`` variables (of ``env``, default ``os.environ``)."""
        source = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            return source.get(PREFIX + name, default)

        def number(name: str, default: float) -> float:
            text = get(name, str(default))
            try:
                return float(text)
            except ValueError:
                raise ConfigurationError(f"{PREFIX}{name} must be a number, not {text!r}") from None

        tls = get("SMTP_TLS", "none").lower()
        d = cls()  # the defaults (slots hide them from the class)
        return cls(
            smtp_host=get("SMTP_HOST", d.smtp_host),
            smtp_port=int(number("SMTP_PORT", d.smtp_port)),
            smtp_tls=tls,  # type: ignore[arg-type]  # checked in __post_init__
            smtp_user=get("SMTP_USER", ""),
            smtp_password=get("SMTP_PASSWORD", ""),
            smtp_sender=get("SMTP_SENDER", d.smtp_sender),
            smtp_timeout=number("SMTP_TIMEOUT", d.smtp_timeout),
            slack_webhook_url=get("SLACK_WEBHOOK_URL", ""),
            slack_timeout=number("SLACK_TIMEOUT", d.slack_timeout),
            deadline=number("DEADLINE", d.deadline),
            send_attempts=int(number("SEND_ATTEMPTS", d.send_attempts)),
            retry_delay=number("RETRY_DELAY", d.retry_delay),
            team_email=get("TEAM_EMAIL", d.team_email),
            snapshot_every=int(number("SNAPSHOT_EVERY", d.snapshot_every)),
            directory=load_directory(get("DIRECTORY", "")),
            fake_senders=get("FAKE_SENDERS", "0").lower() in ("1", "true", "yes"),
        )


_current: Config | None = None


def current() -> Config:
    """This process's settings: as configured, else read from the environment once."""
    global _current  # noqa: PLW0603 - one settings object per process, like logging's
    if _current is None:
        _current = Config.from_env()
    return _current


def configure(config: Config | None) -> None:
    """Use ``config`` in this process from now on (None: read the environment again)."""
    global _current  # noqa: PLW0603 - see current()
    _current = config


__all__ = ["PREFIX", "Config", "TlsMode", "configure", "current"]
