"""The root of every error streamcqrs raises, and the errors of the domain layer.

Each layer keeps its own errors beside its code (``streamcqrs.streams.errors``,
``streamcqrs.handlers.errors``), all under ``StreamCQRSError``; every message says what to do
next.
"""

from __future__ import annotations


class StreamCQRSError(Exception):
    """Root of every error streamcqrs raises; catch this to catch them all."""


class ConfigurationError(StreamCQRSError, ValueError):
    """Settings are missing or contradict each other.

    Also a ValueError: it is raised for a bad argument value, where callers expect one.
    """


class RegistryError(StreamCQRSError):
    """A message type is registered twice, or used without being registered."""


class UnknownMessageType(RegistryError):
    """A stored entry names a type that no registered class answers to."""

    def __init__(self, type_name: str) -> None:
        super().__init__(
            f"no message type is registered under {type_name!r}; register the class with "
            f"@message({type_name!r}) (or add an alias) in the process that reads this stream"
        )
        self.type_name = type_name


class ConcurrencyConflict(StreamCQRSError):
    """An aggregate changed since it was loaded: reload it and decide again."""

    def __init__(self, aggregate_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"aggregate {aggregate_id!r} is at version {actual}, not the expected {expected}; "
            "reload it and retry the decision"
        )
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual


__all__ = [
    "ConcurrencyConflict",
    "ConfigurationError",
    "RegistryError",
    "StreamCQRSError",
    "UnknownMessageType",
]
