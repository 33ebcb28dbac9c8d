"""Every error the framework raises, under one root, each saying what to do next."""

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


class StreamError(StreamCQRSError):
    """A stream operation could not be done."""


class ServerUnavailable(StreamError):
    """No Redis-protocol server could be reached or started."""


class RoleError(StreamError):
    """A stream object was asked to do something its role does not allow."""


class PermissionDenied(RoleError):
    """The server refused a command for the connection's ACL user (NOPERM).

    The user lacks a grant this call needs; ``python -m streams acl MODULE:APP`` prints the
    grants each role gets from the handler declarations.
    """


class DecodeError(StreamError):
    """A stored entry could not be turned back into a message."""

    def __init__(self, stream: str, entry_id: str, reason: str) -> None:
        super().__init__(f"cannot decode entry {entry_id} of stream {stream!r}: {reason}")
        self.stream = stream
        self.entry_id = entry_id
        self.reason = reason


class EncodeError(StreamError):
    """A message could not be packed for storage (say, an int beyond 64 bits)."""


class DuplicateRecord(StreamError):
    """A put with ``OnExisting.RAISE`` found a record with the same object id."""


class ConcurrencyConflict(StreamError):
    """An aggregate changed since it was loaded: reload it and decide again."""

    def __init__(self, aggregate_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"aggregate {aggregate_id!r} is at version {actual}, not the expected {expected}; "
            "reload it and retry the decision"
        )
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual


class HandlingError(StreamError):
    """A handling-status change is not allowed from the record's current status."""


class InvalidTransition(HandlingError):
    """The requested status change is not in Naos's transition table."""

    def __init__(self, record: str, concern: str, current: str, action: str) -> None:
        super().__init__(
            f"cannot {action} record {record!r} for concern {concern!r}: its status is {current}; "
            "see streams.handling.TRANSITIONS for what is allowed from there"
        )
        self.record = record
        self.concern = concern
        self.current = current
        self.action = action


class HandlerError(StreamCQRSError):
    """A handler is declared wrongly, or used a stream it did not declare."""


__all__ = [
    "ConcurrencyConflict",
    "ConfigurationError",
    "DecodeError",
    "DuplicateRecord",
    "EncodeError",
    "HandlerError",
    "HandlingError",
    "InvalidTransition",
    "PermissionDenied",
    "RegistryError",
    "RoleError",
    "ServerUnavailable",
    "StreamCQRSError",
    "StreamError",
    "UnknownMessageType",
]
