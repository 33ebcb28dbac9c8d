"""Errors of the streams layer: the server, roles, codecs, duplicates, handling, ownership."""

from __future__ import annotations

from streamcqrs.domain.errors import ConcurrencyConflict, StreamCQRSError


class StreamError(StreamCQRSError):
    """A stream operation could not be done."""


class ServerUnavailable(StreamError):
    """No Redis-protocol server could be reached or started."""


class RoleError(StreamError):
    """A stream object was asked to do something its role does not allow."""


class PermissionDenied(RoleError):
    """The server refused a command for the connection's ACL user (NOPERM).

    The user lacks a grant this call needs; ``streamcqrs acl MODULE:APP`` prints the grants
    each role gets from the handler declarations.
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


class AlreadySet(StreamError):
    """A commit's once-only key (``Commit.once``) was set already: the commit wrote nothing.

    ``value`` is what the key holds: what the first commit through it recorded (the tracking
    id an idempotency key stands for, the entry a tracking pointer names).
    """

    def __init__(self, key: str, value: str) -> None:
        super().__init__(
            f"{key!r} was already set (to {value!r}) by an earlier commit; nothing was written"
        )
        self.key = key
        self.value = value


class IdempotencyKeyReused(StreamError):
    """An idempotency key already stands for a different operation (``streams.client``)."""


class HandlingError(StreamError):
    """A handling-status change is not allowed from the record's current status."""


class InvalidTransition(HandlingError):
    """The requested status change is not in Naos's transition table."""

    def __init__(self, record: str, concern: str, current: str, action: str) -> None:
        super().__init__(
            f"cannot {action} record {record!r} for concern {concern!r}: its status is {current}; "
            "see streamcqrs.streams.statuses.TRANSITIONS for what is allowed from there"
        )
        self.record = record
        self.concern = concern
        self.current = current
        self.action = action


class AlreadyApplied(StreamError):
    """A forwarded commit (a cluster relay's) was applied before: nothing was written again."""


class NotDurable(StreamError):
    """A durable put was written, but no replica confirmed it in time (WAIT).

    The record is on the primary and may still reach its replicas; if the primary fails
    before they have it, a promoted replica will not. ``result`` is the put's result.
    """

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class Gone(StreamError):
    """A batch tried to take a delayed entry that another writer already took."""


class NotOwner(StreamError):
    """A commit's input is no longer pending on the committing consumer.

    Another bot took the entry over (XAUTOCLAIM after the visibility timeout) and will
    commit it itself; this commit wrote nothing, so drop its result.
    """

    def __init__(self, stream: str, entry_id: str) -> None:
        super().__init__(
            f"entry {entry_id} of {stream!r} is no longer pending on this consumer; another "
            "consumer took it over and will handle it (raise the visibility timeout if "
            "handlers legitimately run this long)"
        )
        self.stream = stream
        self.entry_id = entry_id


class LeaseLost(ConcurrencyConflict):
    """A commit fenced by exclusive access found the lease no longer held by its holder.

    The holder was slower than the lease's time to live (or crashed and came back) and
    another holder may have run meanwhile; this commit wrote nothing. A conflict like any
    other: the bot takes the lease again and re-runs the handler on fresh state.
    """

    def __init__(self, key: str) -> None:
        StreamCQRSError.__init__(
            self,
            f"exclusive access {key!r} is no longer held by this handler (its lease expired or "
            "was taken over); nothing was written: take the lease again and re-run, and give "
            "the lease a longer ttl if handlers legitimately run this long",
        )
        self.aggregate_id = key
        self.expected = self.actual = -1
        self.key = key


__all__ = [
    "AlreadyApplied",
    "AlreadySet",
    "DecodeError",
    "DuplicateRecord",
    "EncodeError",
    "Gone",
    "HandlingError",
    "IdempotencyKeyReused",
    "InvalidTransition",
    "LeaseLost",
    "NotDurable",
    "NotOwner",
    "PermissionDenied",
    "RoleError",
    "ServerUnavailable",
    "StreamError",
]
