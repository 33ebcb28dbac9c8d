"""Channels: which events a subscription wants, as ``event://SUBSYSTEM/STREAM/TYPE``.

Each of the three parts is a name or a pattern in which ``*`` stands for any run of
characters (none included) within that part: ``event://*/events/notification.*``,
``event://notification/events/*``. A realtime trigger's channel names its event id as the
type: ``event://realtime/events/<event id>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from streamcqrs.domain.errors import ConfigurationError

SCHEME = "event://"
_PART = re.compile(r"^[A-Za-z0-9_.*:@-]+$")


@dataclass(frozen=True, slots=True)
class Channel:
    """A parsed channel pattern: subsystem, stream kind and type, each maybe with ``*``."""

    subsystem: str
    stream: str
    type: str

    @classmethod
    def parse(cls, text: str) -> Channel:
        """Parse ``event://SUBSYSTEM/STREAM/TYPE``; ConfigurationError saying the form."""
        return _parse(text)

    def __str__(self) -> str:
        return f"{SCHEME}{self.subsystem}/{self.stream}/{self.type}"

    def matches(self, subsystem: str, stream: str, type_name: str) -> bool:
        """True if an event of ``type_name`` on ``subsystem/stream`` is on this channel."""
        return (
            _glob(self.subsystem).fullmatch(subsystem) is not None
            and _glob(self.stream).fullmatch(stream) is not None
            and _glob(self.type).fullmatch(type_name) is not None
        )

    def covers(self, subsystem: str, stream: str) -> bool:
        """True if some event of ``subsystem/stream`` can be on this channel."""
        return (
            _glob(self.subsystem).fullmatch(subsystem) is not None
            and _glob(self.stream).fullmatch(stream) is not None
        )


@lru_cache(maxsize=4096)
def _parse(text: str) -> Channel:
    if not text.startswith(SCHEME):
        raise ConfigurationError(
            f"channel {text!r} must start with {SCHEME}: event://SUBSYSTEM/STREAM/TYPE, "
            "e.g. event://notification/events/notification.NotificationFailed"
        )
    parts = text[len(SCHEME) :].split("/")
    if len(parts) != 3 or not all(_PART.match(p) for p in parts):
        raise ConfigurationError(
            f"channel {text!r} must be event://SUBSYSTEM/STREAM/TYPE: three parts of letters, "
            "digits and . _ - : @, each may use * as a wildcard"
        )
    return Channel(*parts)


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(piece) for piece in pattern.split("*")))


def channel_of(subsystem: str, stream: str, type_name: str) -> str:
    """The channel an event is published on."""
    return f"{SCHEME}{subsystem}/{stream}/{type_name}"


__all__ = ["SCHEME", "Channel", "channel_of"]
