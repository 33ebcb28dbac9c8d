"""Errors of the handlers layer, and the exceptions a handler raises to steer its handling.

``HandlerError`` is a declaration mistake (a handler used a stream it did not declare): no
retry can fix it. ``Retry``, ``NotYet`` and ``Fail`` are control flow, not failures of the
framework.
"""

from __future__ import annotations

from streamcqrs.domain.errors import StreamCQRSError


class HandlerError(StreamCQRSError):
    """A handler is declared wrongly, or used a stream it did not declare."""


class StartupFailed(HandlerError):
    """A startup hook raised: the worker does not start (its supervisor starts it again)."""


class Retry(StreamCQRSError):
    """Raise from a handler to have its message handled again after ``delay`` seconds.

    Counts as an attempt: after the bot's maximum attempts the record is marked Failed.
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "handler asked to retry")
        self.delay = delay
        self.reason = reason


class NotYet(StreamCQRSError):
    """Raise from a handler that is not ready to handle the message (self-cancellation).

    The record becomes AvailableAfterSelfCancellation and is offered again after ``delay``
    seconds. Does not count as a failed attempt.
    """

    def __init__(self, delay: float = 1.0, reason: str = "") -> None:
        super().__init__(reason or "handler is not ready yet")
        self.delay = delay
        self.reason = reason


class Fail(StreamCQRSError):
    """Raise from a handler to fail its record at once: Failed and dead-lettered, no retries.

    For errors no retry can fix (the input names a customer that does not exist, a
    payment was declined); ``reason`` goes into the dead letter and the handling history.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


__all__ = ["Fail", "HandlerError", "NotYet", "Retry", "StartupFailed"]
