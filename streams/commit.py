"""The commit: everything one step writes, applied atomically by one call of ``commit.lua``.

A ``Commit`` collects intents: ``put`` a record (now, or parked until due), ``append`` events
to an aggregate at an expected version, ``settle`` a record's handling status, park the input
for a later attempt (``retry_later``), ``dead_letter`` it. Built for a consumed ``Input``, it
also checks that the consumer still owns that entry and acks it. Either all of a commit is
written or, when a check fails (a version conflict, a duplicate, a status that does not allow
the change, a lost entry), none of it. Handlers, the bot and the operator tools speak only
these intents; the script's opcodes stay in this module.

``run_commits`` sends many commits in one script call (a bot's whole round); each is checked
and applied on its own, and each gets its own replies or error back.

Redis Cluster: a script may only touch keys of one slot. A commit built with ``home`` (the
partition whose keys it is for: a bot's input partition) routes the puts, appends, snapshots
and delays bound for another hash tag into ``home.outbox`` instead: per other slot, one entry
holding the keys and arguments of one commit for that slot; a relay runs it there,
de-duplicated by message id (``streams.outbox``).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgpack
import redis
import redis.asyncio
from redis.exceptions import ClusterCrossSlotError, NoScriptError, ResponseError

from streamcqrs.domain.errors import ConcurrencyConflict, ConfigurationError
from streamcqrs.streams._ids import now_ms
from streamcqrs.streams._replies import permission_refused
from streamcqrs.streams._wire import check_one_slot, send_all
from streamcqrs.streams.connection import is_cluster
from streamcqrs.streams.deadletter import KIND as DEAD
from streamcqrs.streams.deadletter import DeadLetter, dead_letter
from streamcqrs.streams.delayed import Delayed
from streamcqrs.streams.envelope import Envelope, as_tags
from streamcqrs.streams.errors import (
    AlreadyApplied,
    AlreadySet,
    DuplicateRecord,
    Gone,
    InvalidTransition,
    LeaseLost,
    NotOwner,
    PermissionDenied,
    StreamError,
)
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys
from streamcqrs.streams.scripts import script
from streamcqrs.streams.statuses import (
    STORED_FROM,
    TRANSITIONS,
    Action,
    HistoryEntry,
    pack_history,
)

OUTBOX_FROM = "in"
"""Outbox entry field naming the input stream of the commit that wrote it (absent: none)."""
ATTEMPT_FIELD = b"att"
"""Entry field beside the envelope: which attempt this delivery is (absent: the first)."""
CONCERN_FIELD = b"for"
"""Entry field beside the envelope: the one concern a retried entry is for (absent: all)."""
POLICY_FIELD = b"pol"
"""Entry field beside the envelope: its packed ``ExecutionPolicy`` (absent: the bot's)."""


class OnExisting(StrEnum):
    """What a put does when the stream already holds a record with the same object id."""

    WRITE = "write"  # write anyway; the new record becomes the latest for that id
    SKIP = "skip"  # do not write; the put returns the existing entry id
    RAISE = "raise"  # do not write; raise DuplicateRecord
    PRUNE = "prune"  # write, then delete all but the newest ``keep`` records of that id

    @classmethod
    def for_view(cls, keep: int) -> OnExisting:
        """How a view put keeps its history: the newest ``keep`` per id (0 keeps all)."""
        return cls.PRUNE if keep > 0 else cls.WRITE


def hash_tag(key: str) -> str:
    """The ``{...}`` hash tag a key starts with (the whole key if it has none)."""
    if key.startswith("{"):
        end = key.find("}")
        if end > 0:
            return key[: end + 1]
    return key


@dataclass(slots=True)
class Input:
    """The consumed entry a commit settles: where it was read, by whom, and what it holds.

    A value (not frozen only to keep it cheap to make: one per message).
    """

    part: PartitionKeys
    kind: Kind
    concern: str
    """The consumer group, named after the concern."""
    consumer: str
    entry_id: str
    message_id: str
    """The record's id (the envelope's message id; the entry id for an entry without one)."""
    raw: dict[bytes, bytes]
    envelope: Envelope | None = None
    in_group: bool = True
    """False for an input that was never read from a consumer group (``HandlerTest``): its
    commit settles the record but has no pending entry to check or ack."""

    @property
    def stream(self) -> str:
        """The stream key the entry was read from."""
        return self.part.stream(self.kind)


_PACKED_EVENT = 0x96
"""msgpack header of an aggregate's stored event: an array of 6 (the script adds the 6th)."""


def pack_event(envelope: Envelope) -> bytes:
    """An event as its aggregate stores it, less the entry id the commit adds.

    ``[message id, type, schema, created at, payload, entry id]``: what rebuilding needs and
    what de-duplicates a replayed append. Correlation, causation and tags stay in the
    subsystem's event stream. A 32-hex message id is stored as its 16 bytes.
    """
    mid = envelope.message_id
    stored_id: bytes | str = mid
    if len(mid) == 32:
        with contextlib.suppress(ValueError):
            stored_id = bytes.fromhex(mid)
    head = [stored_id, envelope.type, envelope.schema, envelope.created_at, envelope.payload]
    packed: bytes = msgpack.packb(head, use_bin_type=True)
    return bytes([_PACKED_EVENT]) + packed[1:]


def unpack_event(
    packed: bytes, aggregate_id: str, version: int
) -> tuple[Envelope, str]:
    """An aggregate's stored event as an envelope (at ``version``) and its entry id."""
    mid, type_name, schema, at, payload, entry_id = msgpack.unpackb(packed, raw=False)
    message_id = mid.hex() if isinstance(mid, bytes) else str(mid)
    envelope = Envelope(
        type=type_name,
        payload=payload,
        schema=int(schema),
        object_id=aggregate_id,
        message_id=message_id,
        created_at=int(at),
        seq=version,
    )
    return envelope, str(entry_id)


@dataclass(slots=True)
class _Outbound:
    """What a commit built with ``home`` sends to one other slot: a commit of its own, stored
    in the home outbox by the OUTBOX op at ``index`` (its fields are made when sent)."""

    tag: str
    message_id: str
    commit: Commit
    index: int = -1


class Commit:
    """Intents to write together; send with ``run`` (or many at once with ``run_commits``)."""

    def __init__(
        self,
        input: Input | None = None,
        *,
        home: PartitionKeys | None = None,
        replay_safe: bool = True,
    ) -> None:
        self._keys: dict[str, int] = {}
        self._args: list[Any] = []
        self._context: dict[str, tuple[str, str]] = {}
        self.size = 0
        self.input = input
        self.home = home
        """Set on a cluster: outputs for other hash tags go to ``home.outbox``."""
        self._nonce = ""
        self._outbound: dict[str, _Outbound] = {}
        self.outboxed = False
        """True once an output was routed into the home outbox (a relay has work)."""
        self.replay_safe = replay_safe
        """Standalone puts note a token of this call for two minutes, so a command re-sent
        after a lost reply does not write twice (about 50 bytes per put while it lasts)."""
        if input is not None and input.in_group:
            stream = self._key(input.stream)
            self._op("INPUT", stream, input.concern, input.consumer, input.entry_id)

    def __bool__(self) -> bool:
        return self.size > 0

    # -- wire --------------------------------------------------------------------------------

    def _key(self, key: str) -> int:
        index = self._keys.get(key)
        if index is None:
            index = self._keys[key] = len(self._keys) + 1
        return index

    def _op(self, *words: Any) -> int:
        self._args += words
        self.size += 1
        return self.size - 1

    def _recent(self, part: PartitionKeys, kind: Kind) -> tuple[int, int, str]:
        """The recent-puts hashes a standalone put checks (this minute's, the last one's) and
        the token naming this put of this call.

        A bot's commit needs none: a re-sent one fails its ownership check.
        """
        if self.input is not None or not self.replay_safe:
            return 0, 0, ""
        if not self._nonce:
            self._nonce = secrets.token_hex(6)
        minute = now_ms() // 60_000
        now, before = part.recent_puts(kind, minute), part.recent_puts(kind, minute - 1)
        return self._key(now), self._key(before), f"{self._nonce}.{self.size}"

    @property
    def keys(self) -> list[str]:
        """Every key the commit touches."""
        return list(self._keys)

    def args(self) -> list[Any]:
        """This commit's part of a script call's ARGV."""
        if not self._outbound:
            return ["BEGIN", len(self._keys), *self._keys, *self._args]
        out: list[Any] = ["BEGIN", len(self._keys), *self._keys]
        for word in self._args:
            if isinstance(word, _Outbound):
                fields = self._outbox_fields(word)
                out += [len(fields), *fields]
            else:
                out.append(word)
        return out

    def _foreign(self, key: str) -> bool:
        return self.home is not None and hash_tag(key) != self.home.tag

    def _outbox_for(self, tag: str, message_id: str) -> tuple[Commit, int]:
        """The commit for slot ``tag`` that this one's outbox carries, and the index of its
        OUTBOX op: one per slot, so what a commit sends to one slot is applied there as one,
        checked and written together. ``message_id`` (its first output's) names it."""
        found = self._outbound.get(tag)
        if found is None:
            assert self.home is not None
            found = _Outbound(tag, message_id, Commit())
            found.index = self._op("OUTBOX", self._key(self.home.outbox), found)
            self._outbound[tag] = found
            self.outboxed = True
        return found.commit, found.index

    def _outbox_fields(self, out: _Outbound) -> list[Any]:
        """An outbox entry: the stored commit for one slot; with an input, also which record
        wrote it (stream, concern, record, entry id), for a relay whose forward is refused
        there to send that record back to be handled again."""
        sub = out.commit
        fields = [
            "id", out.message_id, "tag", out.tag,
            "keys", msgpack.packb(sub.keys), "args", msgpack.packb(sub.args()),
        ]  # fmt: skip
        if self.input is not None:
            inp = self.input
            fields += [OUTBOX_FROM, inp.stream, "for", inp.concern, "rec", inp.message_id,
                       "eid", inp.entry_id]  # fmt: skip
        return fields

    @classmethod
    def forwarded(
        cls,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        marks: tuple[str, str],
        keep_s: int,
        message_id: str,
    ) -> Commit:
        """An outbox entry's stored one-commit call, to run in its slot at most once.

        ``marks`` (this period's and the last one's hash of forwarded message ids, in that
        slot; this period's kept ``keep_s`` seconds) de-duplicate it: run again (a relay that
        died before it marked the entry forwarded, a handler run again whose output had gone
        out) it is refused with ``AlreadyApplied`` and writes nothing.
        """
        commit = cls(replay_safe=False)
        for key in keys:
            commit._key(key)
        if list(args[:1]) != ["BEGIN"] or int(args[1]) != len(keys):
            raise StreamError(f"not a stored commit: {list(args[:2])!r}")
        commit._op("MARK", commit._key(marks[0]), commit._key(marks[1]), keep_s, message_id)
        commit._args += list(args[2 + len(keys) :])
        commit.size += 1
        return commit

    def unqueue(self, stream: str, entry_ids: Sequence[str]) -> int:
        """Delete entries of ``stream`` (an outbox) that must still be there; else Gone."""
        return self._op("UNQUEUE", self._key(stream), len(entry_ids), *entry_ids)

    # -- outputs -----------------------------------------------------------------------------

    def put(
        self,
        keys: SubsystemKeys,
        kind: Kind,
        envelope: Envelope,
        *,
        on_existing: OnExisting = OnExisting.WRITE,
        keep: int = 1,
        due_ms: int | None = None,
        policy: bytes = b"",
    ) -> int:
        """Put a record into its partition of stream ``kind`` (or park it until ``due_ms``).

        The partition is the object id's (the message id's when it has none), so one object's
        records stay in order. ``policy``: a packed ``ExecutionPolicy`` the entry carries.
        Returns the op's index among the replies.
        """
        part = keys.for_object(envelope.object_id or envelope.message_id)
        if due_ms is not None:
            member = Delayed(kind.value, envelope, on_existing, keep, policy=policy).pack()
            return self.delay(part.delayed(kind), due_ms, member)
        extra = (POLICY_FIELD, policy) if policy else ()
        return self.put_at(part, kind, envelope, on_existing=on_existing, keep=keep, extra=extra)

    def put_at(
        self,
        part: PartitionKeys,
        kind: Kind,
        envelope: Envelope,
        *,
        on_existing: OnExisting = OnExisting.WRITE,
        keep: int = 1,
        maxlen: int = 0,
        extra: Sequence[bytes | str | int] = (),
    ) -> int:
        """Put a record into partition ``part``, indexed by object id and tags.

        ``extra`` adds field/value pairs beside the envelope's (a retry's attempt number).
        A put outside a bot's commit recognises its own replay (redis-py re-sends a command
        after a lost reply) by its message id and does not write twice (see ``replay_safe``);
        a bot's commit needs no such check (a replay fails its ownership check).
        """
        if on_existing is OnExisting.PRUNE and keep < 1:
            raise ConfigurationError(f"OnExisting.PRUNE must keep at least 1 record, not {keep}")
        if self._foreign(part.tag):
            sub, index = self._outbox_for(part.tag, envelope.message_id)
            sub.put_at(part, kind, envelope, on_existing=on_existing, keep=keep, maxlen=maxlen,
                       extra=extra)  # fmt: skip
            return index
        return self._op(*self._put_words(part, kind, envelope, on_existing, keep, maxlen, extra))

    def _put_words(  # noqa: PLR0917 - put_at's operands, in its order
        self,
        part: PartitionKeys,
        kind: Kind,
        envelope: Envelope,
        on_existing: OnExisting,
        keep: int,
        maxlen: int,
        extra: Sequence[bytes | str | int],
    ) -> list[Any]:
        obj = envelope.object_id
        prune = on_existing is OnExisting.PRUNE and obj
        byid = self._key(part.by_object(kind, obj)) if prune else 0
        values = envelope.values()
        return [
            "PUT", self._key(part.stream(kind)), self._key(part.index(kind)), byid,
            len(envelope.tags), *(self._key(part.tag_index(kind, n, v)) for n, v in envelope.tags),
            on_existing.value, keep, obj, maxlen, *self._recent(part, kind),
            len(values), *values, len(extra), *extra,
        ]  # fmt: skip

    def append(
        self,
        keys: SubsystemKeys,
        aggregate_id: str,
        envelopes: Sequence[Envelope],
        expected_version: int | None,
    ) -> int:
        """Append events to an aggregate at a version (None: no check), and to the events stream.

        On a cluster, an aggregate in another slot is appended to by the relay, whose commit
        there checks the version.
        """
        part = keys.for_object(aggregate_id)
        if self._foreign(part.tag) and envelopes:
            sub, index = self._outbox_for(part.tag, envelopes[0].message_id)
            sub.append(keys, aggregate_id, envelopes, expected_version)
            return index
        words: list[Any] = [
            "APPEND", self._key(part.aggregate(aggregate_id)),
            self._key(part.stream(Kind.EVENTS)), self._key(part.index(Kind.EVENTS)),
            aggregate_id, -1 if expected_version is None else expected_version, len(envelopes),
        ]  # fmt: skip
        for envelope in envelopes:
            values = envelope.values()
            words += [
                pack_event(envelope),
                len(envelope.tags),
                *(self._key(part.tag_index(Kind.EVENTS, n, v)) for n, v in envelope.tags),
                len(values),
                *values,
            ]
        return self._op(*words)

    def snapshot(self, keys: SubsystemKeys, envelope: Envelope, version: int, keep: int = 1) -> int:
        """Store a snapshot (``aggregates.snapshot_envelope``) of an aggregate at ``version``,
        keeping the newest ``keep`` per aggregate, if the aggregate is still at that version
        when the commit applies (after its own appends); a state that moved on is skipped.
        """
        part = keys.for_object(envelope.object_id)
        if self._foreign(part.tag):
            sub, index = self._outbox_for(part.tag, envelope.message_id)
            sub.snapshot(keys, envelope, version, keep)
            return index
        words = self._put_words(part, Kind.SNAPSHOTS, envelope, OnExisting.PRUNE, keep, 0, ())
        return self._op("SNAPSHOT", self._key(part.aggregate(envelope.object_id)), version,
                        *words[1:])  # fmt: skip

    def delay(self, zset: str, due_ms: int, member: bytes) -> int:
        """Schedule ``member`` (a packed ``Delayed``) into a delayed set at ``due_ms``."""
        if self._foreign(zset):
            digest = hashlib.blake2b(member, digest_size=16).hexdigest()
            sub, index = self._outbox_for(hash_tag(zset), digest)
            sub.delay(zset, due_ms, member)
            return index
        return self._op("DELAY", self._key(zset), due_ms, member)

    def dead_letter(
        self, letter: DeadLetter, *, part: PartitionKeys | None = None, once_per_entry: bool = False
    ) -> int:
        """Put ``letter`` into the dead-letter stream of ``part`` (default: the input's).

        ``once_per_entry``: bad input is bad for every concern reading its stream; each of
        their bots acks it, but only the first writes the dead letter (keyed by the entry).
        """
        where = part or (self.input.part if self.input else None)
        if where is None:
            raise ConfigurationError("a dead letter needs a partition: pass part=")
        if once_per_entry:
            envelope = letter.envelope(object_id=letter.entry_key)
            return self.put_at(where, DEAD, envelope, on_existing=OnExisting.SKIP)
        return self.put_at(where, DEAD, letter.envelope())

    # -- the input's handling ----------------------------------------------------------------

    def settle(
        self,
        action: Action,
        *,
        details: str = "",
        tags: Sequence[tuple[str, str]] = (),
        actor: str = "",
        started_ms: int = 0,
        attempt: int = 0,
        taken_over: bool = False,
        record: tuple[PartitionKeys, Kind, str, str] | None = None,
        allowed_from: Sequence[str] | None = None,
        label: str = "",
    ) -> None:
        """Change a record's handling status, with a history entry; checked when it runs.

        Add it last: the script then settles a record without a status in its check.

        The record is the input's (for its concern) unless ``record`` names (partition, kind,
        concern, record id). Refused with InvalidTransition if the stored status does not
        allow ``action`` (see ``statuses.STORED_FROM``); the whole commit is then refused.
        ``allowed_from`` replaces that table for a store of the framework's own (dead-letter
        marks); ``label`` names the action in the refusal.
        """
        if action not in TRANSITIONS:
            raise ConfigurationError(
                f"{action.value} switches a whole stream, not a record; "
                "use HandlingStore.disable_stream/enable_stream"
            )
        if record is None:
            if self.input is None:
                raise ConfigurationError("settle needs an input or record=(part, kind, ...)")
            inp = self.input
            record = (inp.part, inp.kind, inp.concern, inp.message_id)
        part, kind, concern, record_id = record
        to = TRANSITIONS[action][1]
        entry = pack_history(
            now_ms(), to, action, details, as_tags(tags), actor, started_ms, attempt, taken_over
        )
        allowed = _SORTED_FROM[action] if allowed_from is None else ",".join(sorted(allowed_from))
        self._op(
            "SETTLE", self._key(part.handling_status(kind, concern)), record_id, to.value,
            allowed, entry,
        )  # fmt: skip
        self._context[record_id] = (concern, label or action.value)

    def retry_later(self, due_ms: int, attempt: int) -> int:
        """Park the input's envelope in its delayed set, for its concern only, as ``attempt``."""
        inp = self.input
        if inp is None or inp.envelope is None:
            raise ConfigurationError("retry_later needs a decoded input")
        policy = inp.raw.get(POLICY_FIELD, b"")
        member = Delayed(
            inp.kind.value, inp.envelope, attempt=attempt, concern=inp.concern, policy=policy
        )
        return self.delay(inp.part.delayed(inp.kind), due_ms, member.pack())

    def switch(
        self,
        part: PartitionKeys,
        kind: Kind,
        field: str,
        value: str,
        entry: HistoryEntry,
        *,
        allowed_from: Sequence[str] = (),
        concern: str = "",
    ) -> None:
        """Set a stream or record switch in the flags hash, logged; checked when it runs."""
        self._op(
            "SWITCH", self._key(part.handling_flags(kind)),
            self._key(part.handling_flags_log(kind)), field, value, len(allowed_from),
            *allowed_from, entry.to_bytes(),
        )  # fmt: skip
        self._context[field] = (concern, entry.action.value)

    # -- order per object ---------------------------------------------------------------------

    def release_turn(self) -> int:
        """The input, settled for good, hands its object's turn to the next entry parked behind
        it (a concern handled in order: ``read_in_turn``). Nothing if it does not hold it.

        Names the record and object by the entry's raw fields, as the read script did, so
        an entry that turned out undecodable still hands its turn on.
        """
        inp = self.input
        if inp is None:
            raise ConfigurationError("release_turn needs an input")
        part, kind, concern = inp.part, inp.kind, inp.concern
        return self._op(
            "RELEASE", self._key(part.order_turns(kind, concern)), inp.raw.get(b"obj", b""),
            inp.raw.get(b"id", b""), self._key(part.order_waiting(kind, concern)),
            self._key(part.order_queue(kind, concern)), self._key(inp.stream), concern,
        )  # fmt: skip

    # -- delayed entries and claims ----------------------------------------------------------

    def move_due(self, part: PartitionKeys, kind: Kind, member: bytes) -> None:
        """Take a due member from the delayed set of ``part``'s ``kind`` and put it (once).

        Fails with Gone if another mover took it first. A member that is not a packed put is
        dead-lettered with the reason instead of being lost or moved forever.
        """
        zset = part.delayed(kind)
        self._op("TAKE", self._key(zset), member)
        try:
            parked = Delayed.unpack(member)
            target = Kind(parked.kind)
            strategy = OnExisting(parked.on_existing)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            letter = dead_letter(
                reason=f"delayed member is not a packed put: {exc}",
                stream=zset,
                entry_id="",
                raw={b"member": member},
                error=exc,
            )
            self.dead_letter(letter, part=part)
            return
        extra: list[bytes | str | int] = []
        if parked.attempt:
            extra += [ATTEMPT_FIELD, parked.attempt]
        if parked.concern:
            extra += [CONCERN_FIELD, parked.concern]
        if parked.policy:
            extra += [POLICY_FIELD, parked.policy]
        if parked.envelope.seq is not None:
            extra += [b"seq", parked.envelope.seq]  # a retried aggregate event keeps its version
        self.put_at(part, target, parked.envelope, on_existing=strategy, keep=parked.keep,
                    extra=extra)  # fmt: skip

    def touch(
        self, stream: str, group: str, consumer: str, entry_ids: Sequence[str], idle_ms: int = 0
    ) -> int:
        """Reset the idle time of entries ``consumer`` still owns (to ``idle_ms``).

        ``idle_ms=0`` keeps a long-running handler's claim past the visibility timeout; a
        huge ``idle_ms`` hands the entries to the next XAUTOCLAIM at once. Replies with the
        ids that were still owned.
        """
        return self._op(
            "TOUCH", self._key(stream), group, consumer, idle_ms, len(entry_ids), *entry_ids
        )

    def once(self, key: str, ttl_ms: int, value: str = "") -> int:
        """Refuse the whole commit (AlreadySet) if ``key`` is set; else set it for ``ttl_ms``.

        ``value`` is what the key keeps ("" keeps the entry id of the commit's last put before
        this intent). Only the commit's script reads the key, so a write-only client can guard
        its puts with it (an idempotency key, a tracking pointer) and still not read its stream.
        """
        if ttl_ms < 1:
            raise ConfigurationError(f"a once-only key needs a time to live, not {ttl_ms} ms")
        return self._op("ONCE", self._key(key), ttl_ms, value)

    def delete(self, key: str) -> int:
        """Delete a key."""
        return self._op("DEL", self._key(key))

    def zrem(self, zset: str, member: bytes | str) -> int:
        """Remove a member from a sorted set."""
        return self._op("ZREM", self._key(zset), member)

    # -- deferred work: leases, receipts, schedules, compaction ------------------------------

    def fence(self, lease: str, token: str) -> int:
        """Commit only if exclusive access ``lease`` is still held by ``token``; release it.

        Refused with LeaseLost (a ConcurrencyConflict: re-run) when the lease expired or
        another holder took it, so a holder that lost its lease writes nothing.
        """
        return self._op("LEASE", self._key(lease), token)

    def receipt(
        self, key: str, fields: Mapping[str, str | int], *, delete_at_ms: int = 0
    ) -> int:
        """Write a ticket's receipt fields; with ``delete_at_ms`` the receipt expires then."""
        flat = [item for pair in fields.items() for item in pair]
        return self._op("RECEIPT", self._key(key), len(flat), *flat, delete_at_ms)

    def advance(self, hash_key: str, field: str, expected: str, new: str) -> int:
        """Set ``field`` of ``hash_key`` from ``expected`` ("" = absent) to ``new``.

        Refused with Gone when the field holds anything else: of many bots advancing a
        schedule past one due time, exactly one commits.
        """
        return self._op("CURSOR", self._key(hash_key), field, expected, new)

    def compact(self, aggregate_key: str, upto_version: int) -> int:
        """Drop an aggregate's events up to ``upto_version`` (a snapshot's), keeping its version.

        Replies with how many events were dropped (0 if already compacted that far).
        """
        return self._op("COMPACT", self._key(aggregate_key), upto_version)

    # -- running -----------------------------------------------------------------------------

    async def run(self, client: redis.asyncio.Redis) -> list[Any]:
        """Apply on an async client; its replies, one per intent, or the error it failed with."""
        (result,) = await run_commits(client, [self])
        if isinstance(result, Exception):
            raise result
        return result

    def run_sync(self, client: redis.Redis) -> list[Any]:
        """Apply on a sync client (producers, CLIs)."""
        if is_cluster(client):
            check_one_slot(self.keys)
        try:
            (reply,) = script("commit").run_sync(client, self.keys, self.args())
        except ResponseError as exc:
            raise self.error(str(exc)) from None
        result = self.result(reply)
        if isinstance(result, Exception):
            raise result
        return result

    def result(self, reply: Any) -> list[Any] | Exception:
        """This commit's part of the script's reply: its replies, or the error it means."""
        ok, value = reply
        if int(ok):
            return list(value)
        text = value.decode() if isinstance(value, bytes) else str(value)
        return self.error(text)

    def error(self, text: str) -> Exception:
        """The framework error a refusal (or the server's error text) means."""
        if permission_refused(text):
            return PermissionDenied(
                f"the server refused this commit for the connection's ACL user: {text}; "
                "grant the user the keys its handlers declare (streamcqrs acl MODULE:APP)"
            )
        words = text.split()
        # Servers may prefix script errors with their own text; find our code word.
        for at, word in enumerate(words):
            rest = words[at + 1 :]
            if word == "STATUS" and len(rest) >= 2:
                concern, action = self._context.get(rest[0], ("", "set status"))
                return InvalidTransition(rest[0], concern, rest[1], action)
            decode = _REFUSALS.get(word)
            if decode is not None and len(rest) >= decode[0]:
                return decode[1](rest)
        return StreamError(f"commit failed: {text}")


_SORTED_FROM = {action: ",".join(sorted(allowed)) for action, allowed in STORED_FROM.items()}
"""STORED_FROM with each allowed-from set as the comma-separated list the script takes."""

_REFUSALS: dict[str, tuple[int, Callable[[list[str]], Exception]]] = {
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
    "DONE": (1, lambda r: AlreadyApplied(
        f"the forwarded commit of message {r[0]} was applied before; nothing was written"
    )),
    "FORWARDED": (1, lambda r: Gone(f"outbox entry {r[0]} was already forwarded")),
    "NOTOWNER": (2, lambda r: NotOwner(r[0], r[1])),
    "LEASE": (1, lambda r: LeaseLost(r[0])),
    "TAKEN": (1, lambda r: Gone(
        f"{r[0]!r} was already advanced (now {' '.join(r[1:]) or 'absent'}) by another bot"
    )),
    "ONCE": (2, lambda r: AlreadySet(r[0], r[1])),
}  # fmt: skip
"""Refusal code of commit.lua -> (operands it carries, the framework error it means)."""


def _slot_groups(commits: Sequence[Commit], by_slot: bool) -> list[list[int]]:
    if not by_slot:
        return [list(range(len(commits)))]
    groups: dict[str, list[int]] = {}
    for at, commit in enumerate(commits):
        tag = hash_tag(commit.keys[0]) if commit.keys else ""
        groups.setdefault(tag, []).append(at)
    return list(groups.values())


def _named(reply: Any, keys: Sequence[str]) -> Any:
    """A CROSSSLOT refusal as a ConfigurationError naming the key that breaks it (the
    server's names none); any other reply as it is."""
    if isinstance(reply, ClusterCrossSlotError):
        try:
            check_one_slot(keys)
        except ConfigurationError as exc:
            return exc
    return reply


async def run_commits(
    client: redis.asyncio.Redis, commits: Sequence[Commit], *, by_slot: bool = False
) -> list[list[Any] | Exception]:
    """Run commits in one network round trip: one script call (per slot with ``by_slot``).

    Returns, per commit and in order, its replies or the error it failed with; one commit's
    refusal does not stop the others. An error of a whole call (a lost connection, an ACL
    refusal) is the result of each of its commits. On a cluster client the calls are always
    per slot.
    """
    if not commits:
        return []
    commit_script = script("commit")
    groups = _slot_groups(commits, by_slot or is_cluster(client))
    out: list[list[Any] | Exception] = [StreamError("not run")] * len(commits)
    todo = list(range(len(groups)))
    for _attempt in range(2):
        calls = []
        for g in todo:
            keys: dict[str, None] = {}
            args: list[Any] = []
            for at in groups[g]:
                keys.update(dict.fromkeys(commits[at].keys))
                args += commits[at].args()
            calls.append(("EVALSHA", commit_script.sha, len(keys), *keys, *args))
        replies = await send_all(client, calls)
        retry = []
        for g, reply in zip(todo, replies, strict=True):
            if isinstance(reply, NoScriptError):
                retry.append(g)  # a restarted or flushed script cache: that call did nothing
                continue
            got = _named(reply, [k for at in groups[g] for k in commits[at].keys])
            for n, at in enumerate(groups[g]):
                if isinstance(got, ResponseError):
                    out[at] = commits[at].error(str(got))
                elif isinstance(got, Exception):
                    out[at] = got
                else:
                    out[at] = commits[at].result(got[n])
        if not retry:
            break
        await commit_script.load(client)
        todo = retry
    return out


__all__ = [
    "ATTEMPT_FIELD",
    "CONCERN_FIELD",
    "OUTBOX_FROM",
    "POLICY_FIELD",
    "Commit",
    "Input",
    "OnExisting",
    "hash_tag",
    "pack_event",
    "run_commits",
    "unpack_event",
]
