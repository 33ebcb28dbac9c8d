"""A batch of writes applied atomically by one call of ``commit.lua``.

Producers use a one-op batch for a put; aggregates use it for a versioned append; the bot
packs everything a handler emitted plus the ack of its input into one batch. Either all of a
batch is written or, when a check fails (version conflict, duplicate, status, ownership),
none of it.

Redis Cluster: a script may only touch keys of one slot. A batch built with ``home=`` (the
partition whose keys the commit is for: the bot's input partition) routes every put, append
or delay bound for another hash tag into ``home.outbox`` instead, in the same call. Each
outbox entry holds the KEYS and ARGV of a one-op commit for the other slot and the output's
message id; a relay runs it there, skipping ids it has forwarded before. On one server,
batches are built without ``home`` and write every key directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

import msgpack
import redis
import redis.asyncio
from redis.exceptions import NoScriptError, ResponseError

from streamcqrs.domain.errors import ConcurrencyConflict, ConfigurationError
from streamcqrs.streams.envelope import Envelope
from streamcqrs.streams.errors import (
    DuplicateRecord,
    Gone,
    InvalidTransition,
    NotOwner,
    PermissionDenied,
    StreamError,
)
from streamcqrs.streams.keys import Kind, PartitionKeys
from streamcqrs.streams.scripts import script

_pack: Any
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis]; work without it
    _pack = None


def hash_tag(key: str) -> str:
    """The ``{...}`` hash tag a key starts with (the whole key if it has none)."""
    if key.startswith("{"):
        end = key.find("}")
        if end > 0:
            return key[: end + 1]
    return key


class OnExisting(StrEnum):
    """What a put does when the stream already holds a record with the same object id."""

    WRITE = "write"  # write anyway; the new record becomes the latest for that id
    SKIP = "skip"  # do not write; the put returns the existing entry id
    RAISE = "raise"  # do not write; raise DuplicateRecord
    PRUNE = "prune"  # write, then delete all but the newest ``keep`` records of that id


class Batch:
    """Writes to apply together: build with the methods below, then ``run`` once."""

    def __init__(self, home: PartitionKeys | None = None) -> None:
        self._keys: dict[str, int] = {}
        self._args: list[Any] = []
        self._status_context: dict[str, tuple[str, str]] = {}
        self.size = 0
        self.home = home
        """Set on a cluster: outputs for other hash tags go to ``home.outbox``."""

    def _foreign(self, key: str) -> bool:
        return self.home is not None and hash_tag(key) != self.home.tag

    def _to_outbox(self, sub: Batch, message_id: str) -> int:
        """Route a one-op batch for another slot into the home partition's outbox."""
        assert self.home is not None
        fields = [
            "id", message_id, "tag", hash_tag(sub.keys[0]),
            "keys", msgpack.packb(sub.keys), "args", msgpack.packb(sub._args),
        ]  # fmt: skip
        self._args += ["OUTBOX", self._key(self.home.outbox), len(fields), *fields]
        self.size += 1
        return self.size - 1

    def __bool__(self) -> bool:
        return self.size > 0

    def _key(self, key: str) -> int:
        index = self._keys.get(key)
        if index is None:
            index = self._keys[key] = len(self._keys) + 1
        return index

    def put(
        self,
        keys: PartitionKeys,
        kind: Kind,
        envelope: Envelope,
        *,
        on_existing: OnExisting = OnExisting.WRITE,
        keep: int = 1,
        maxlen: int = 0,
        extra: Sequence[bytes | str | int] = (),
    ) -> int:
        """Add a record to stream ``kind``, indexed by object id and tags; return its op index.

        ``extra`` adds field/value pairs beside the envelope's (the bot's attempt count).
        """
        if on_existing is OnExisting.PRUNE and keep < 1:
            raise ConfigurationError(f"OnExisting.PRUNE must keep at least 1 record, not {keep}")
        if self._foreign(keys.tag):
            sub = Batch()
            sub.put(keys, kind, envelope, on_existing=on_existing, keep=keep, maxlen=maxlen,
                    extra=extra)  # fmt: skip
            return self._to_outbox(sub, envelope.message_id)
        obj = envelope.object_id
        prune = on_existing is OnExisting.PRUNE and obj
        byid = self._key(keys.by_object(kind, obj)) if prune else 0
        fields = [*envelope.fields(), *extra]
        self._args += [
            "PUT", self._key(keys.stream(kind)), self._key(keys.index(kind)), byid,
            len(envelope.tags),
            *(self._key(keys.tag_index(kind, n, v)) for n, v in envelope.tags),
            on_existing.value, keep, obj, maxlen, len(fields), *fields,
        ]  # fmt: skip
        self.size += 1
        return self.size - 1

    def append(
        self,
        keys: PartitionKeys,
        aggregate_id: str,
        envelopes: Sequence[Envelope],
        expected_version: int | None,
    ) -> int:
        """Append events to an aggregate (and the subsystem's event stream) at a version.

        Routed to the outbox on a cluster when the aggregate lives in another slot: the
        relay's append then checks the version when it runs, not in this commit.
        """
        if self._foreign(keys.tag) and envelopes:
            sub = Batch()
            sub.append(keys, aggregate_id, envelopes, expected_version)
            return self._to_outbox(sub, envelopes[0].message_id)
        self._args += [
            "APPEND", self._key(keys.aggregate(aggregate_id)), self._key(keys.versions),
            self._key(keys.aggregate_message_ids(aggregate_id)),
            self._key(keys.stream(Kind.EVENTS)), self._key(keys.index(Kind.EVENTS)),
            aggregate_id, -1 if expected_version is None else expected_version, len(envelopes),
        ]  # fmt: skip
        for envelope in envelopes:
            fields = envelope.fields()
            self._args += [
                envelope.message_id,
                len(envelope.tags),
                *(self._key(keys.tag_index(Kind.EVENTS, n, v)) for n, v in envelope.tags),
                len(fields),
                *fields,
            ]
        self.size += 1
        return self.size - 1

    def ack(self, stream: str, group: str, entry_ids: Sequence[str]) -> None:
        """Acknowledge entries of ``stream`` for consumer group ``group``."""
        self._args += ["ACK", self._key(stream), group, len(entry_ids), *entry_ids]
        self.size += 1

    def delay(self, zset: str, due_ms: int, member: bytes) -> None:
        """Schedule ``member`` (an encoded envelope) into a delayed set at ``due_ms``."""
        if self._foreign(zset):
            sub = Batch()
            sub.delay(zset, due_ms, member)
            self._to_outbox(sub, hashlib.blake2b(member, digest_size=16).hexdigest())
            return
        self._args += ["DELAY", self._key(zset), due_ms, member]
        self.size += 1

    def status(
        self,
        status_hash: str,
        history: str,
        record: str,
        status: str,
        entry: bytes,
        *,
        allowed_from: Sequence[str] = (),
        concern: str = "",
        action: str = "set status",
    ) -> None:
        """Set a record's handling status (if its current one is allowed) and log history."""
        self._args += [
            "STATUS", self._key(status_hash), self._key(history), record, status,
            len(allowed_from), *allowed_from, entry,
        ]  # fmt: skip
        self._status_context[record] = (concern, action)
        self.size += 1

    def delete(self, key: str) -> None:
        """Delete a key."""
        self._args += ["DEL", self._key(key)]
        self.size += 1

    def zrem(self, zset: str, member: bytes | str) -> None:
        """Remove a member from a sorted set."""
        self._args += ["ZREM", self._key(zset), member]
        self.size += 1

    def take(self, zset: str, member: bytes) -> None:
        """Remove a member that must still be there; if another writer took it, fail with Gone."""
        self._args += ["TAKE", self._key(zset), member]
        self.size += 1

    def owns(self, stream: str, group: str, consumer: str, entry_ids: Sequence[str]) -> None:
        """Check that ``consumer`` still owns these pending entries, or write nothing.

        Put it in every commit that acks a consumer-group entry: a bot whose entry was taken
        over after the visibility timeout must not commit a second time.
        """
        self._args += ["OWNS", self._key(stream), group, consumer, len(entry_ids), *entry_ids]
        self.size += 1

    def touch(
        self, stream: str, group: str, consumer: str, entry_ids: Sequence[str], idle_ms: int = 0
    ) -> None:
        """Reset the idle time of entries ``consumer`` still owns (to ``idle_ms``).

        ``idle_ms=0`` keeps a long-running handler's claim past the visibility timeout; a
        huge ``idle_ms`` hands the entries to the next XAUTOCLAIM at once. Replies with the
        ids that were still owned.
        """
        self._args += [
            "TOUCH", self._key(stream), group, consumer, idle_ms, len(entry_ids), *entry_ids,
        ]  # fmt: skip
        self.size += 1

    @property
    def keys(self) -> list[str]:
        """Every key the batch touches, in KEYS order."""
        return list(self._keys)

    async def run(self, client: redis.asyncio.Redis) -> list[Any]:
        """Apply the batch on an async client; one reply per op."""
        try:
            return list(await script("commit").run(client, self.keys, self._args))
        except ResponseError as exc:
            raise self._error(exc) from None

    def run_sync(self, client: redis.Redis) -> list[Any]:
        """Apply the batch on a sync client; one reply per op."""
        try:
            return list(script("commit").run_sync(client, self.keys, self._args))
        except ResponseError as exc:
            raise self._error(exc) from None

    def error(self, exc: ResponseError) -> Exception:
        """The framework error a failed run of this batch means (ConcurrencyConflict...)."""
        return self._error(exc)

    def _error(self, exc: ResponseError) -> Exception:
        text = str(exc)
        # How servers word an ACL refusal: of a command, inside a script, of a key.
        if any(mark in text for mark in ("NOPERM", "ACL failure", "No permissions")):
            return PermissionDenied(
                f"the server refused this commit for the connection's ACL user: {text}; "
                "grant the user the keys its handlers declare (python -m streams acl)"
            )
        words = text.split()
        # Servers may prefix script errors with their own text; find our code word.
        for at, word in enumerate(words):
            rest = words[at + 1 :]
            if word == "STATUS" and len(rest) >= 2:
                concern, action = self._status_context.get(rest[0], ("", "set status"))
                return InvalidTransition(rest[0], concern, rest[1], action)
            decode = _SCRIPT_ERRORS.get(word)
            if decode is not None and len(rest) >= decode[0]:
                return decode[1](rest)
        return StreamError(f"commit failed: {exc}")


_SCRIPT_ERRORS: dict[str, tuple[int, Callable[[list[str]], Exception]]] = {
    "CONFLICT": (3, lambda r: ConcurrencyConflict(r[0], int(r[1]), int(r[2]))),
    "DUPLICATE": (2, lambda r: DuplicateRecord(
        f"a record with object id {r[0]!r} already exists (entry {r[1]}); "
        "put with on_existing=OnExisting.SKIP to make retries idempotent"
    )),
    "MIXED": (3, lambda r: DuplicateRecord(
        f"an append to aggregate {r[0]!r} repeats {r[1]} of its {r[2]} event ids: a retry "
        "must resend exactly the same events, and new events need new ids; nothing was written"
    )),
    "GONE": (0, lambda r: Gone("the delayed entry was already moved by another bot")),
    "NOTOWNER": (2, lambda r: NotOwner(r[0], r[1])),
}  # fmt: skip
"""Error code of commit.lua -> (operands it carries, the framework error it means)."""


def _packed(conn: Any, calls: list[tuple[Any, ...]]) -> bytes | list[bytes]:
    """The wire bytes of ``calls``: hiredis's packer, else the connection's own."""
    if _pack is not None:
        try:
            return b"".join(_pack(call) for call in calls)
        except TypeError:  # an argument type hiredis does not take: redis-py packs it
            pass
    return list(conn.pack_commands(calls))


async def _send_all(client: redis.asyncio.Redis, calls: list[tuple[Any, ...]]) -> list[Any]:
    """Send commands in one write on one pooled connection; each reply or its error, in order.

    What a non-transactional pipeline does, without its per-command bookkeeping (about a
    tenth of a bot's CPU per operation in the case-2 profile); hiredis packs the commands.
    """
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(_packed(conn, calls), False)
        out: list[Any] = []
        for _ in calls:
            try:
                out.append(await conn.read_response())
            except ResponseError as exc:  # this call's error; the next replies still follow
                out.append(exc)
        return out
    except BaseException:
        # Mid-exchange (lost server, cancellation): replies may still be in flight, so this
        # connection cannot serve another command.
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


async def run_many(
    client: redis.asyncio.Redis, batches: Sequence[Batch]
) -> list[list[Any] | Exception]:
    """Run several batches in one network round trip, each its own atomic script call.

    Returns, per batch and in order, its replies or the error it failed with (one batch's
    conflict does not stop the others). The bot commits many handlers' results this way.
    """
    if not batches:
        return []
    commit = script("commit")
    replies: list[Any] = [None] * len(batches)
    todo = list(range(len(batches)))
    for _attempt in range(2):
        calls = [
            ("EVALSHA", commit.sha, len(batches[at].keys), *batches[at].keys, *batches[at]._args)
            for at in todo
        ]
        for at, reply in zip(todo, await _send_all(client, calls), strict=True):
            replies[at] = reply
        # A restarted or flushed script cache: NOSCRIPT means that call did nothing, so
        # load the script once and run just those again.
        todo = [at for at in todo if isinstance(replies[at], NoScriptError)]
        if not todo:
            break
        await client.script_load(commit.source)
    out: list[list[Any] | Exception] = []
    for batch, reply in zip(batches, replies, strict=True):
        if isinstance(reply, ResponseError):
            out.append(batch.error(reply))
        elif isinstance(reply, Exception):
            out.append(reply)
        else:
            out.append(list(reply))
    return out
