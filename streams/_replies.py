"""The one place that reads the server's error texts; callers ask by meaning, never by word.

Redis and Valkey answer errors as text ("NOGROUP ...", "BUSYGROUP ...", "NOPERM ..."), and
redis-py turns most of them into a plain ``ResponseError``. Which words mean what, and the
variants servers use (a refusal inside a script reads "ACL failure in script"), are kept
here, beside the one helper that creates a consumer group whether or not it exists.
"""

from __future__ import annotations

import redis.asyncio
from redis.exceptions import AuthenticationError, MovedError, ResponseError

_PERMISSION = ("NOPERM", "ACL failure", "No permissions")
"""How servers word an ACL refusal: of a command, inside a script, of a key."""


def permission_refused(text: str) -> bool:
    """True if an error text is the server refusing the connection's ACL user."""
    return any(mark in text for mark in _PERMISSION)


def group_missing(exc: BaseException) -> bool:
    """True for the server's answers about a missing consumer group or stream.

    NOGROUP: the group (or its stream) does not exist; a script's XREADGROUP says so too.
    UNBLOCKED: the stream was deleted (FLUSHALL, DEL) while an XREADGROUP was blocked on it.
    XGROUP SETID on a missing stream answers "no such key".
    """
    if not isinstance(exc, ResponseError):
        return False
    text = str(exc)
    return "NOGROUP" in text or "UNBLOCKED" in text or "no such key" in text.lower()


def group_exists(exc: BaseException) -> bool:
    """True for XGROUP CREATE's answer when the group is already there (BUSYGROUP)."""
    return isinstance(exc, ResponseError) and "BUSYGROUP" in str(exc)


def login_refused(exc: BaseException) -> bool:
    """True if the server refused the connection's username or password."""
    return isinstance(exc, AuthenticationError) or "WRONGPASS" in str(exc)


def no_such_database(exc: BaseException) -> bool:
    """True if SELECT named a database number the server does not have."""
    return isinstance(exc, ResponseError) and "DB index is out of range" in str(exc)


def cluster_disabled(exc: BaseException) -> bool:
    """True for a single server's answer to CLUSTER INFO (or a server without the command)."""
    text = str(exc).lower()
    return isinstance(exc, ResponseError) and (
        "cluster support disabled" in text or "unknown command" in text
    )


def moved(exc: BaseException) -> bool:
    """True for a cluster node's MOVED answer (a plain client sent a key to the wrong node)."""
    return isinstance(exc, MovedError) or str(exc).startswith("MOVED")


async def ensure_group(client: redis.asyncio.Redis, key: str, group: str, start: str) -> bool:
    """Create ``group`` on stream ``key`` (and the stream) after id ``start``; True if it was
    created, False if it existed (where it stands is left alone)."""
    try:
        await client.xgroup_create(key, group, id=start, mkstream=True)
    except ResponseError as exc:
        if group_exists(exc):
            return False
        raise
    return True

