"""Least-privilege Redis ACL users, built from grants and rendered as ``ACL SETUSER``.

A role (a client, a bot, an API) is a list of grants; each grant is a set of commands allowed
on a set of key patterns, and becomes one Redis 7 ACL *selector* ``(%R~keys +commands)``. A
command runs when one selector allows the command on every key it names, so grants do not
leak into each other: a bot may XADD into the streams it declared and XREADGROUP its input,
and still cannot XADD into its input.

Two server rules shape the grants (checked in tests/test_acl.py on a real server):

* ``EVALSHA`` declares its KEYS read-write, so every key a script is handed needs ``~``
  (read and write) in the selector that allows ``EVALSHA``. That selector allows nothing
  else, and inside the script every ``redis.call`` is checked again, command and key, against
  the user: a write-only producer runs ``commit.lua`` but a script that tries ``XRANGE`` on
  its stream fails with "ACL failure in script".
* Key permissions follow each command's key spec: XADD, HSET, ZADD, XACK need write only
  (``%W~``); XRANGE, HGET need read only (``%R~``); INCRBY, XREADGROUP, XAUTOCLAIM need both.

The building blocks below (``put``, ``next_id``, ``read``, ``consume``, ``append``, ``load``,
and for deferred work ``move``, ``lease``, ``receipts``, ``concern_status``, ``cursor``,
``clean``, ``compact``) know which keys and commands each framework operation touches;
``handlers.acl`` composes them from an app's declarations. Patterns are exact per partition:
``{notification.0}:views``, not ``{notification.*}``, whose ``*`` would also match keys of
other streams.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial

import redis

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.streams.connection import is_cluster
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys

_SENTINEL = "\x00any\x00"
_GLOB_SPECIAL = "\\*?[]"
SCRIPT_COMMANDS = ("evalsha", "script|load")
"""How the framework runs its Lua scripts: EVALSHA, and SCRIPT LOAD after a NOSCRIPT."""
CONNECTION_COMMANDS = (
    "ping", "client|setinfo", "cluster|info", "cluster|slots", "cluster|shards", "command",
    "asking",
)  # fmt: skip
"""Keyless commands every role gets: health checks, redis-py's library name on connect, and
what a cluster client needs: whether the server is a cluster, which node serves which slots,
the command table (to find a command's keys) and ASKING (a slot being moved)."""
READER_COMMANDS = (
    "xrange", "xrevrange", "xread", "xlen", "hget", "zrangebyscore", "zrevrangebyscore",
)  # fmt: skip
"""What a reader does on a stream and its indexes (read by time, live, latest, by tag)."""
CONSUMER_COMMANDS = (
    "xreadgroup", "xack", "xautoclaim", "xclaim", "xpending", "xgroup|create",
    "xgroup|createconsumer", "xgroup|delconsumer", "xinfo|groups", "xinfo|consumers",
    "xinfo|stream", "xrange", "xrevrange", "xlen",
)  # fmt: skip
"""What a consumer-group member does on its input stream (XREADGROUP needs read and write)."""
HANDLING_COMMANDS = ("hget", "hmget", "hset", "hsetnx")
"""What a consumer does on its handling store: one hash of statuses with their history."""
DELAYED_COMMANDS = ("zadd", "zrangebyscore", "zscore", "zrem", "zcard")
"""What a consumer does on its input's delayed set: park retries, take due entries."""
FLAG_COMMANDS = ("hget", "hmget", "hgetall", "hexists")
"""What a consumer does on the disable switches: read them (operators set them)."""
TURN_COMMANDS = ("hget", "hset", "hdel")
"""What an ordered consumer does on its objects' turns: who holds each."""
PARKED_COMMANDS = ("xadd", "xrange", "xdel", "zadd", "zrangebylex", "zrem")
"""What an ordered consumer does on its parked entries: park, find the next, take it back."""
AGGREGATE_READ_COMMANDS = ("llen", "lindex", "lrange")
"""What loading an aggregate does on its event list: its length (the version) and events."""
MOVER_COMMANDS = ("zrangebyscore", "zscore", "zrem")
"""What the mover does on a delayed set it serves: find due members, take them."""
LEASE_COMMANDS = ("set", "get", "pexpire", "del")
"""What lease.lua does on a lease key (take, renew, release) and a commit's fence (GET, DEL)."""
STATUS_CLEANER_COMMANDS = ("hscan", "hmget", "hget", "hdel")
"""What the cleaner does on handling statuses: find done records, forget them if unchanged."""


class Access(StrEnum):
    """How a key pattern may be used: read, write, or both (the ACL prefix of the pattern)."""

    READ = "%R~"
    WRITE = "%W~"
    READ_WRITE = "~"


def escape(text: str) -> str:
    """``text`` as a glob matching only itself (Redis key patterns treat ``*?[]\\`` as glob)."""
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


def wildcard(make: Callable[[str], str]) -> str:
    """A pattern for every key ``make(x)`` can return: the fixed parts escaped, ``x`` as ``*``.

    Built by calling the key scheme itself, so a pattern never drifts from ``streams.keys``:
    ``wildcard(lambda x: part.by_object(Kind.VIEWS, x))`` is ``{s.0}:views:obj:*``.
    """
    return escape(make(_SENTINEL)).replace(escape(_SENTINEL), "*")


@dataclass(frozen=True, slots=True, order=True)
class KeyGrant:
    """One key pattern and how it may be used."""

    pattern: str
    access: Access

    def render(self) -> str:
        """The pattern as ACL SETUSER spells it: ``%R~{s.0}:views``."""
        return f"{self.access.value}{self.pattern}"


@dataclass(frozen=True, slots=True)
class Grant:
    """Commands allowed on key patterns: one ACL selector. ``why`` documents it."""

    keys: tuple[KeyGrant, ...]
    commands: tuple[str, ...]
    why: str = ""

    def render(self) -> str:
        """The selector: ``(%R~a ~b +xrange +hget)``."""
        keys = " ".join(k.render() for k in sorted(set(self.keys)))
        commands = " ".join(f"+{c}" for c in sorted(set(self.commands)))
        return f"({keys} {commands})" if keys else f"({commands})"


def grant(patterns: Iterable[str], access: Access, commands: Sequence[str], why: str = "") -> Grant:
    """A grant of ``commands`` on every pattern in ``patterns`` with one access."""
    return Grant(tuple(KeyGrant(p, access) for p in patterns), tuple(commands), why)


@dataclass(frozen=True, slots=True)
class Grants:
    """What one framework operation needs: keys its scripts are handed, and selectors.

    ``script_keys`` are merged over the whole role into the one selector that allows EVALSHA,
    because a single commit hands one script every key it touches.
    """

    script_keys: frozenset[str] = frozenset()
    grants: tuple[Grant, ...] = ()

    def __add__(self, other: Grants) -> Grants:
        return Grants(self.script_keys | other.script_keys, self.grants + other.grants)


@dataclass(frozen=True, slots=True)
class Role:
    """A Redis user: a name, what it is for, and its grants."""

    name: str
    grants: Grants
    why: str = ""
    commands: tuple[str, ...] = CONNECTION_COMMANDS

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() or c in "()" for c in self.name):
            raise ConfigurationError(
                f"ACL user name {self.name!r} must be non-empty, without spaces or parentheses"
            )

    def selectors(self) -> list[Grant]:
        """The role's selectors: the script selector first, then the grants merged.

        Grants with the same commands and access collapse into one selector so that the
        rendered user stays short enough to read.
        """
        out: list[Grant] = []
        if self.grants.script_keys:
            keys = sorted(self.grants.script_keys)
            out.append(
                grant(keys, Access.READ_WRITE, SCRIPT_COMMANDS, "run the framework's scripts")
            )
        merged: dict[tuple[str, ...], list[KeyGrant]] = {}
        whys: dict[tuple[str, ...], list[str]] = {}
        for each in self.grants.grants:
            commands = tuple(sorted(set(each.commands)))
            merged.setdefault(commands, []).extend(each.keys)
            if each.why and each.why not in whys.setdefault(commands, []):
                whys[commands].append(each.why)
        for commands, key_grants in merged.items():
            why = "; ".join(whys.get(commands, []))
            out.append(Grant(tuple(sorted(set(key_grants))), commands, why))
        return out

    def setuser_args(self, password: str | None) -> list[str]:
        """Arguments of ``ACL SETUSER``: reset, on, the password, root commands, selectors.

        ``password=None`` leaves the user without any password (it cannot log in), to be
        given one by the operator.
        """
        args = [self.name, "reset", "on"]
        if password is not None:
            args.append(f">{password}")
        args += [f"+{c}" for c in self.commands]
        args += [s.render() for s in self.selectors()]
        return args

    def render(self, password: str | None) -> str:
        """One ``ACL SETUSER`` line, ready for redis-cli (selectors are one argument each)."""
        parts = ["ACL", "SETUSER", *self.setuser_args(password)]
        return " ".join(f'"{p}"' if " " in p else p for p in parts)

    def apply(self, client: redis.Redis, password: str | None) -> None:
        """Create or replace the user on the server ``client`` is connected to.

        On a cluster, on every node it has now, replicas too (each node keeps its own users;
        a node added later needs them applied again).
        """
        args = ("ACL", "SETUSER", *self.setuser_args(password))
        if is_cluster(client):
            client.execute_command(*args, target_nodes=redis.RedisCluster.ALL_NODES)  # type: ignore[no-untyped-call]
        else:
            client.execute_command(*args)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


def new_password() -> str:
    """A random password for a generated user."""
    return secrets.token_urlsafe(24)


# -- building blocks: what each framework operation touches --------------------------------


def _parts(keys: SubsystemKeys) -> list[PartitionKeys]:
    return keys.all()


def _tags(part: PartitionKeys, kind: Kind) -> str:
    return wildcard(lambda x: part.tag_index(kind, x, x))


def _by_object(part: PartitionKeys, kind: Kind) -> str:
    return wildcard(lambda x: part.by_object(kind, x))


def put(
    keys: SubsystemKeys,
    kind: Kind,
    *,
    dedupe: bool = True,
    prune: bool = True,
    delay: bool = True,
) -> Grants:
    """Put records into one stream kind through ``commit.lua``.

    A put XADDs the entry, HSETs the latest-by-id index and ZADDs each tag index. ``prune``
    (views, snapshots: keep the newest N per id) also trims the per-object set and XDELs old
    entries; ``dedupe`` (``OnExisting.SKIP``/``RAISE``) reads the index and the stream, which
    a write-only producer must not; ``delay`` parks a put in the delayed set. Every put made
    outside a bot's commit also notes its message id in the stream's recent-puts hashes (only
    its own script reads them), to recognise its own replay.
    """
    where = f"{keys.subsystem}/{kind}"
    streams = [escape(p.stream(kind)) for p in _parts(keys)]
    indexes = [escape(p.index(kind)) for p in _parts(keys)]
    sets = [_tags(p, kind) for p in _parts(keys)]
    by_object = [_by_object(p, kind) for p in _parts(keys)]
    delayed = [escape(p.delayed(kind)) for p in _parts(keys)]
    # The minute at the end of the key is the wildcard: every minute's hash.
    recent = [escape(p.recent_puts(kind, 0)[:-1]) + "*" for p in _parts(keys)]
    if delay:
        sets += delayed
    # One command per key class: XADD on an index key would make a stream there.
    out = [
        grant(streams, Access.WRITE, ("xadd",), f"put into {where}"),
        grant(indexes, Access.WRITE, ("hset",), f"index puts into {where} by object id"),
        grant(sets, Access.WRITE, ("zadd",), f"index puts into {where} by tag"),
        grant(recent, Access.READ_WRITE, ("hget", "hset", "expire"), "recognise a re-sent put"),
    ]
    if prune:
        out.append(grant(by_object, Access.READ_WRITE, ("zadd", "zcard", "zrange", "zrem")))
        out.append(grant(streams, Access.WRITE, ("xdel",), f"prune {where} to the newest per id"))
    if dedupe:
        out.append(grant(indexes + streams, Access.READ, ("hget", "xrange"), "skip duplicates"))
    script = streams + indexes + sets + recent + (by_object if prune else [])
    return Grants(frozenset(script), tuple(out))


def next_id(keys: SubsystemKeys, kind: Kind) -> Grants:
    """Hand out tracking ids from one stream's sequence: INCR only.

    Not INCRBY: a user who may add any amount can move the sequence back (``INCRBY seq
    -1000``) and have ids handed out twice; ``next_id`` only ever adds one.
    """
    sequence = escape(keys.partition(0).sequence(kind))
    why = f"next_id of {keys.subsystem}/{kind}"
    return Grants(grants=(grant([sequence], Access.READ_WRITE, ("incr",), why),))


def execute(keys: SubsystemKeys, kind: Kind) -> Grants:
    """The client protocol's puts (``streams.client``): idempotency keys, tracking pointers.

    Both are once-only keys the put's own script checks and sets (GET, SET); the stream
    itself stays write-only.
    """
    once = [wildcard(partial(p.idempotency, kind)) for p in _parts(keys)]
    once += [wildcard(partial(p.tracking, kind)) for p in _parts(keys)]
    why = f"idempotency keys and tracking pointers of {keys.subsystem}/{kind}"
    return Grants(frozenset(once), (grant(once, Access.READ_WRITE, ("get", "set"), why),))


def status(keys: SubsystemKeys, kind: Kind) -> Grants:
    """Ask an operation's status (``Client.status``) without reading the stream.

    Reads, per partition: the tracking pointers (which entry an operation was put as), the
    handling statuses of every concern and the switches, the dead-letter index (is there a
    dead letter of the record); on the stream only XPENDING (is the entry being handled:
    Running) and XINFO GROUPS (which concerns read it). None of these return an entry's
    fields, and the stream's own latest-by-id index stays unreadable.
    """
    parts = _parts(keys)
    tables = [wildcard(partial(p.handling_status, kind)) for p in parts]
    tables += [escape(p.handling_flags(kind)) for p in parts]
    tables += [escape(p.index(Kind.DEAD_LETTERS)) for p in parts]
    pointers = [wildcard(partial(p.tracking, kind)) for p in parts]
    streams = [escape(p.stream(kind)) for p in parts]
    why = f"status of {keys.subsystem}/{kind} operations"
    return Grants(
        grants=(
            grant(tables, Access.READ, ("hget", "hmget"), why),
            grant(pointers, Access.READ, ("get",), why),
            grant(streams, Access.READ, ("xpending", "xinfo|groups"), why),
        )
    )


def read(keys: SubsystemKeys, kind: Kind) -> Grants:
    """Read one stream kind: by time range, live, latest by id (latest.lua), by tag (by_tag.lua).

    The two scripts drop index entries whose records were trimmed (HDEL, ZREM on the index
    only); that is the one write a reader makes, and it never touches the stream itself.
    """
    streams, indexes, script = [], [], set()
    for part in _parts(keys):
        stream = escape(part.stream(kind))
        index = escape(part.index(kind))
        tags = _tags(part, kind)
        streams.append(stream)
        indexes += [index, tags]
        script |= {stream, index, tags}
    why = f"read {keys.subsystem}/{kind}"
    return Grants(
        frozenset(script),
        (
            grant(streams + indexes, Access.READ, READER_COMMANDS, why),
            grant(indexes, Access.WRITE, ("hdel", "zrem"), "heal indexes of trimmed records"),
        ),
    )


def consume(keys: SubsystemKeys, kind: Kind, concern: str, *, ordered: bool = False) -> Grants:
    """Consume one stream kind for one concern: the group, the handling store, the delayed set.

    A consumer parks retries in its input's delayed set, and moves due delayed entries into
    the input (take from the set, put into the stream): the one write into its input it is
    granted. On a cluster its commits put output for other slots into its partition's outbox.
    An ``ordered`` consumer also keeps its objects' turns and parked entries, puts a parked
    entry back into its input when its turn comes, and waits for new entries with XREAD.
    """
    streams, handling, flags, delayed, outboxes = [], [], [], [], []
    for part in _parts(keys):
        streams.append(escape(part.stream(kind)))
        handling.append(escape(part.handling_status(kind, concern)))
        flags.append(escape(part.handling_flags(kind)))
        delayed.append(escape(part.delayed(kind)))
        outboxes.append(escape(part.outbox))
    where = f"{keys.subsystem}/{kind}"
    mover = put(keys, kind, dedupe=True, prune=False, delay=False)
    own = Grants(
        frozenset(streams + handling + flags + delayed + outboxes),
        (
            grant(streams, Access.READ_WRITE, CONSUMER_COMMANDS, f"consume {where}"),
            grant(handling, Access.READ_WRITE, HANDLING_COMMANDS, f"handling of {where}"),
            grant(flags, Access.READ, FLAG_COMMANDS, f"read the switches of {where}"),
            grant(delayed, Access.READ_WRITE, DELAYED_COMMANDS, f"retry and move {where}"),
            grant(outboxes, Access.WRITE, ("xadd",), "cluster outbox of the input partition"),
        ),
    )
    if ordered:
        turns = [escape(p.order_turns(kind, concern)) for p in _parts(keys)]
        parked = [
            escape(key)
            for p in _parts(keys)
            for key in (p.order_waiting(kind, concern), p.order_queue(kind, concern))
        ]
        own += Grants(
            frozenset(turns + parked),
            (
                grant(turns, Access.READ_WRITE, TURN_COMMANDS, f"turns of {where}/{concern}"),
                grant(parked, Access.READ_WRITE, PARKED_COMMANDS, f"parked {where}/{concern}"),
                grant(streams, Access.READ, ("xread",), f"wait for new entries of {where}"),
            ),
        )
    return own + mover


RELAY_REGISTRY = "{streamcqrs}:relays"
"""The sorted set of live outbox relays (``bots.outbox_relay.RELAYS``, named here for the
layers below bots)."""


def relay(inputs: Iterable[SubsystemKeys], targets: Iterable[SubsystemKeys]) -> Grants:
    """Forward the outboxes of ``inputs`` (a bot's relay on a cluster) into ``targets``.

    The relay reads and trims its partitions' outboxes, takes their leases (``lease.lua``),
    notes itself among the relays alive, and marks each forwarded message id in the target
    partition (``commit.lua``'s ONCE). The forwarded calls themselves write what the
    handlers declared, which the role has from ``put`` and ``append``; one refused there
    goes back to its record (handling store, delayed set, dead letters: ``consume``'s).
    """
    outboxes, leases, marks = [], [], []
    for keys in inputs:
        outboxes += [escape(p.outbox) for p in _parts(keys)]
        leases += [escape(p.outbox_lease) for p in _parts(keys)]
    for keys in targets:
        marks += [wildcard(lambda x, p=p: p.forwarded(x)) for p in _parts(keys)]  # type: ignore[misc]
    why = "outbox relay"
    return Grants(
        frozenset(outboxes + leases + marks),
        (
            grant(outboxes, Access.READ_WRITE, ("xrange", "xlen", "xdel"), f"{why}: outboxes"),
            grant(leases, Access.READ_WRITE, ("get", "set", "pexpire", "del"),
                  f"{why}: one per outbox"),
            grant(marks, Access.READ_WRITE, ("hexists", "hset", "expire"),
                  f"{why}: forward each output once"),
            grant([escape(RELAY_REGISTRY)], Access.READ_WRITE,
                  ("zadd", "zremrangebyscore", "zcard", "zrem"), f"{why}: share the outboxes"),
        ),
    )  # fmt: skip


def append(keys: SubsystemKeys) -> Grants:
    """Append events to the aggregates of one subsystem (and its events stream), and load them.

    commit.lua's APPEND reads the aggregate's list (its length, head and tail: the version
    and a replay check), then RPUSHes the packed events and XADDs them to the events stream.
    """
    lists = [wildcard(part.aggregate) for part in _parts(keys)]
    why = f"append to {keys.subsystem} aggregates"
    events = put(keys, Kind.EVENTS, dedupe=False, prune=False, delay=False)
    return (
        Grants(
            frozenset(lists),
            (grant(lists, Access.READ_WRITE, ("rpush", *AGGREGATE_READ_COMMANDS), why),),
        )
        + events
        + load(keys)
    )


def load(keys: SubsystemKeys) -> Grants:
    """Load aggregates of one subsystem: snapshots (latest by id) and aggregates' event lists."""
    lists = [wildcard(p.aggregate) for p in _parts(keys)]
    why = f"load {keys.subsystem} aggregates"
    return read(keys, Kind.SNAPSHOTS) + Grants(
        grants=(grant(lists, Access.READ, AGGREGATE_READ_COMMANDS, why),)
    )


def move(keys: SubsystemKeys, kind: Kind) -> Grants:
    """Move due entries of one stream kind's delayed sets into it (the bots' mover serves
    every stream the app writes to, not only its inputs): read the set, take a member
    (ZSCORE, ZREM in the commit), put it (OnExisting.SKIP reads the index and the stream)."""
    delayed = [escape(p.delayed(kind)) for p in _parts(keys)]
    why = f"move due entries into {keys.subsystem}/{kind}"
    return Grants(
        frozenset(delayed), (grant(delayed, Access.READ_WRITE, MOVER_COMMANDS, why),)
    ) + put(keys, kind, dedupe=True, prune=False, delay=False)


def lease(key: str, why: str) -> Grants:
    """Hold one lease (``streams.leases``): take, renew, release it through lease.lua, and
    fence a commit with it (commit.lua's LEASE). One exact key, never a pattern."""
    keys = [escape(key)]
    return Grants(frozenset(keys), (grant(keys, Access.READ_WRITE, LEASE_COMMANDS, why),))


def receipts(keys: SubsystemKeys, *, expire: bool = False, read: bool = False) -> Grants:
    """Ticket receipts of one subsystem (one small hash per ticket, ``{s.p}:receipt:<id>``).

    Submitting a ticket writes its first receipt (HSET, in commit.lua's RECEIPT); the ticket
    executor finishes it and sets when the server deletes it (``expire``: PEXPIREAT);
    a submitter reads receipts back (``read``: HGETALL, outside any script).
    """
    found = [wildcard(p.receipt) for p in _parts(keys)]
    where = f"{keys.subsystem} receipts"
    out = [grant(found, Access.WRITE, ("hset", "pexpireat") if expire else ("hset",),
                 f"write {where}")]  # fmt: skip
    if read:
        out.append(grant(found, Access.READ, ("hgetall",), f"read {where}"))
    return Grants(frozenset(found), tuple(out))


def concern_status(keys: SubsystemKeys, kind: Kind, concern: str) -> Grants:
    """Read one concern's handling statuses and the stream's switches (``HandlingStore.status``
    and ``history``), as a ticket's submitter does to tell a Failed ticket from a waiting one
    (``status`` reads every concern's, for ``Client.status``)."""
    where = f"{keys.subsystem}/{kind}/{concern}"
    found = [escape(p.handling_status(kind, concern)) for p in _parts(keys)]
    flags = [escape(p.handling_flags(kind)) for p in _parts(keys)]
    return Grants(grants=(
        grant(found + flags, Access.READ, ("hget", "hmget"), f"read the statuses of {where}"),
    ))  # fmt: skip


def cursor(key: str, why: str) -> Grants:
    """A schedules hash (``{s.p}:schedules``): the timers read each schedule's last due time
    and move it on in the commit that puts the operation (commit.lua's CURSOR)."""
    keys = [escape(key)]
    return Grants(frozenset(keys), (grant(keys, Access.READ_WRITE, ("hget", "hset"), why),))


def clean(keys: SubsystemKeys, kind: Kind, *, trim: bool) -> Grants:
    """Apply a retention policy to one stream kind (``streams.cleaning``, clean.lua).

    Forget the statuses of done records of every concern on the stream (its consumer groups
    name them: XINFO GROUPS; a status is forgotten, HDEL, only if unchanged: HGET), and note
    what was cleaned for ``streamcqrs show``. With ``trim``, also drop the stream's oldest
    entries (XTRIM, never past what a group still needs: XPENDING) with their index entries
    (latest by id, by tag, by object) and their records' done statuses.
    """
    where = f"{keys.subsystem}/{kind}"
    streams = [escape(p.stream(kind)) for p in _parts(keys)]
    found = [wildcard(partial(p.handling_status, kind)) for p in _parts(keys)]
    notes = [escape(p.cleaned(kind)) for p in _parts(keys)]
    out = [
        grant(streams, Access.READ, ("xinfo|groups",), f"find the concerns of {where}"),
        grant(found, Access.READ_WRITE, STATUS_CLEANER_COMMANDS, f"forget done in {where}"),
        grant(notes, Access.WRITE, ("hset",), f"note what was cleaned of {where}"),
    ]
    script = found + notes
    if trim:
        indexes = [escape(p.index(kind)) for p in _parts(keys)]
        sets = [_tags(p, kind) for p in _parts(keys)] + [_by_object(p, kind) for p in _parts(keys)]
        out += [
            grant(streams, Access.READ, ("xlen", "xrange", "xpending"), f"find old {where}"),
            grant(streams, Access.WRITE, ("xtrim",), f"trim {where}"),
            grant(indexes, Access.READ_WRITE, ("hget", "hdel"), f"unindex trimmed {where}"),
            grant(sets, Access.WRITE, ("zrem",), f"unindex trimmed {where} by tag and object"),
        ]
        script += streams + indexes + sets
    return Grants(frozenset(script), tuple(out))


def compact(keys: SubsystemKeys) -> Grants:
    """Compact one subsystem's aggregates behind their snapshots (``cleaning.compact``): read
    the snapshots put since the last run (a cursor in the snapshots' cleaned notes), and drop
    each aggregate's events up to its snapshot (commit.lua's COMPACT: LTRIM, LPUSH a header).
    """
    where = f"{keys.subsystem} aggregates"
    snapshots = [escape(p.stream(Kind.SNAPSHOTS)) for p in _parts(keys)]
    notes = [escape(p.cleaned(Kind.SNAPSHOTS)) for p in _parts(keys)]
    lists = [wildcard(p.aggregate) for p in _parts(keys)]
    return Grants(frozenset(lists), (
        grant(snapshots, Access.READ, ("xrange",), f"find snapshots to compact {where} behind"),
        grant(notes, Access.READ_WRITE, ("hget", "hset"), f"how far {where} were compacted"),
        grant(lists, Access.READ_WRITE, ("llen", "lindex", "ltrim", "lpush"), f"compact {where}"),
    ))  # fmt: skip


def role(name: str, parts: Iterable[Grants], why: str = "") -> Role:
    """A role from building blocks: ``role("email-client", [put(...), next_id(...)])``."""
    total = Grants()
    for each in parts:
        total = total + each
    return Role(name, total, why)


@dataclass(frozen=True, slots=True)
class Roles:
    """Every role of an app, in the order they should be created."""

    roles: tuple[Role, ...] = field(default_factory=tuple)

    def render(self, passwords: dict[str, str | None]) -> list[str]:
        """``ACL SETUSER`` lines, each preceded by a comment saying what the user is for."""
        out = []
        for each in self.roles:
            out.append(f"# {each.name}: {each.why}" if each.why else f"# {each.name}")
            out.append(each.render(passwords.get(each.name)))
        return out


__all__ = [
    "AGGREGATE_READ_COMMANDS",
    "CONNECTION_COMMANDS",
    "CONSUMER_COMMANDS",
    "DELAYED_COMMANDS",
    "FLAG_COMMANDS",
    "HANDLING_COMMANDS",
    "LEASE_COMMANDS",
    "MOVER_COMMANDS",
    "READER_COMMANDS",
    "RELAY_REGISTRY",
    "SCRIPT_COMMANDS",
    "STATUS_CLEANER_COMMANDS",
    "Access",
    "Grant",
    "Grants",
    "KeyGrant",
    "Role",
    "Roles",
    "append",
    "clean",
    "compact",
    "concern_status",
    "consume",
    "cursor",
    "escape",
    "execute",
    "grant",
    "lease",
    "load",
    "move",
    "new_password",
    "next_id",
    "put",
    "read",
    "receipts",
    "relay",
    "role",
    "status",
    "wildcard",
]
