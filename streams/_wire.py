"""Talking to the server below redis-py's command layer, where the hot path needs it.

redis-py encodes every argument and bookkeeps every command in Python; a bot sends one big
script call per round and reads batches of entries all the time, and that bookkeeping cost
more than the rest of a bot's work per entry. ``send_all`` writes packed commands to one
pooled connection and reads the replies in order; ``fast_packing`` makes a client's own
connections encode commands with hiredis (installed with redis-py's ``hiredis`` extra).

On a cluster client ``send_all`` does what ``RedisCluster`` does for one command, for many:
each command goes to the primary that owns its first key's slot (a keyless one, such as
WAIT, to the node of the command before it), the commands for one node in one write on one of
its connections, the nodes at once. A MOVED or ASK reply (a slot that moved, a replica
promoted) updates the slot map and re-sends that command where it now belongs; a node that
cannot be reached, or a slot nobody serves during a failover, makes the client look the
cluster up again before its next command, and comes back as a ConnectionError for that
command, as a lost server does on one server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, cast

import redis.asyncio
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.streams.connection import is_cluster

_pack: Any
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis]; work without it
    _pack = None


def _packed(conn: Any, calls: list[tuple[Any, ...]]) -> bytes | list[bytes]:
    """The wire bytes of ``calls``: hiredis's packer, else the connection's own."""
    if _pack is not None:
        try:
            return b"".join(_pack(call) for call in calls)
        except TypeError:  # an argument type hiredis does not take: redis-py packs it
            pass
    return list(conn.pack_commands(calls))


async def send_all(
    client: redis.asyncio.Redis, calls: list[tuple[Any, ...]], *, reply_timeout: float | None = None
) -> list[Any]:
    """Send commands in one write on one pooled connection; each reply or its error, in order.

    What a non-transactional pipeline does, without its per-command bookkeeping. Replies come
    as the server sent them (lists, bytes, ints), not through redis-py's response callbacks.
    ``reply_timeout`` bounds each reply's wait (a blocking read's block time plus slack).
    On a cluster client, routed to the nodes that own the keys (see the module).
    """
    if is_cluster(client):
        return await _send_routed(cast(Any, client), calls, reply_timeout)
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(_packed(conn, calls), False)
        out: list[Any] = []
        for _ in calls:
            try:
                out.append(await conn.read_response(timeout=reply_timeout))
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


# -- a cluster: each command to the node that owns its slot ------------------------------------

REDIRECTS = 3
"""Times a command is re-sent after MOVED/ASK/TRYAGAIN before its error is returned."""
_NETWORK = (RedisConnectionError, RedisTimeoutError, OSError)
_KEYLESS = frozenset({"WAIT", "WAITAOF", "ASKING", "PING"})


def first_key(call: Sequence[Any]) -> bytes | None:
    """The key a command's slot is taken from (None for a keyless one)."""
    name = str(call[0].decode() if isinstance(call[0], bytes) else call[0]).upper()
    if name in _KEYLESS:
        return None
    if name in ("EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "FCALL_RO"):
        return _encoded(call[3]) if int(call[2]) > 0 else None
    if name in ("XREAD", "XREADGROUP"):
        words = [str(w).upper() if isinstance(w, str) else w for w in call]
        return _encoded(call[words.index("STREAMS") + 1])
    return _encoded(call[1]) if len(call) > 1 else None


def _encoded(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


def check_one_slot(keys: Iterable[str | bytes], what: str = "one script call") -> None:
    """ConfigurationError naming the first key not in the first key's cluster slot.

    A script may touch the keys of one slot only on a cluster (the server refuses it with
    CROSSSLOT, which names no key); every key of one partition shares its hash tag.
    """
    first: bytes | None = None
    slot = -1
    for key in keys:
        raw = _encoded(key)
        if first is None:
            first, slot = raw, key_slot(raw)
        elif key_slot(raw) != slot:
            raise ConfigurationError(
                f"key {raw.decode(errors='replace')!r} (slot {key_slot(raw)}) is not in the slot "
                f"of {first.decode(errors='replace')!r} (slot {slot}), but {what} touches both; "
                "on a cluster every key of a script call must share one hash tag {subsystem.p}: "
                "send outputs for other partitions through a commit built with home= (bots "
                "do), or one call per partition"
            )


def replicas_of(client: Any, key: str | bytes) -> int:
    """How many replicas the primary serving ``key`` has, as the client last saw (0 on one
    server: a single server's replicas are not known to the client, and WAIT is opt-in)."""
    if not is_cluster(client):
        return 0
    nodes = client.nodes_manager.slots_cache.get(key_slot(_encoded(key)), [])
    return max(0, len(nodes) - 1)


def refresh_later(cluster: Any) -> None:
    """Make the cluster client look up the nodes and slots again before its next command.

    What redis-py's own command path does after a connection error (its ``_initialize``
    flag); ``initialize`` then asks the nodes that still answer.
    """
    cluster._initialize = True


async def _send_routed(
    cluster: Any, calls: list[tuple[Any, ...]], reply_timeout: float | None
) -> list[Any]:
    out: list[Any] = [None] * len(calls)
    asking: set[int] = set()
    todo = list(range(len(calls)))
    for round_ in range(REDIRECTS + 1):
        try:
            await cluster.initialize()
        except (*_NETWORK, ClusterDownError, SlotNotCoveredError) as exc:
            error = RedisConnectionError(f"cannot reach the cluster: {exc}")
            for at in todo:
                out[at] = error
            return out
        by_node = _route(cluster, calls, todo, out)
        exchanges = [
            _exchange(cluster, node, [calls[at] for at in ats], asking=[at in asking for at in ats],
                      reply_timeout=reply_timeout)
            for node, ats in by_node.items()
        ]  # fmt: skip
        for ats, replies in zip(by_node.values(), await asyncio.gather(*exchanges), strict=True):
            for at, reply in zip(ats, replies, strict=True):
                out[at] = reply
        todo, asking = await _redirected(cluster, out, todo)
        if not todo:
            break
        if round_ < REDIRECTS and any(isinstance(out[at], TryAgainError) for at in todo):
            await asyncio.sleep(0.05)
    return out


def _route(
    cluster: Any, calls: list[tuple[Any, ...]], todo: list[int], out: list[Any]
) -> dict[Any, list[int]]:
    """The calls of ``todo`` by the node that serves each (a keyless one: the one before's)."""
    by_node: dict[Any, list[int]] = {}
    node = None
    for at in todo:
        key = first_key(calls[at])
        if key is not None:
            try:
                node = cluster.nodes_manager.get_node_from_slot(key_slot(key))
            except SlotNotCoveredError as exc:
                out[at] = RedisConnectionError(f"no node serves slot {key_slot(key)}: {exc}")
                refresh_later(cluster)
                continue
        node = node or cluster.get_default_node()
        by_node.setdefault(node, []).append(at)
    return by_node


async def _redirected(
    cluster: Any, out: list[Any], todo: list[int]
) -> tuple[list[int], set[int]]:
    """Which of ``todo`` to send again (MOVED, ASK, TRYAGAIN), and which of those after ASKING.

    A MOVED reply patches the slot map; CLUSTERDOWN (a failover under way) becomes a
    ConnectionError, which callers retry after a pause, and the nodes are looked up again.
    """
    again: list[int] = []
    asking: set[int] = set()
    for at in todo:
        reply = out[at]
        if isinstance(reply, MovedError):
            await cluster.nodes_manager.move_slot(reply)
            again.append(at)
        elif isinstance(reply, AskError):
            asking.add(at)
            again.append(at)
        elif isinstance(reply, TryAgainError):
            again.append(at)
        elif isinstance(reply, ClusterDownError):
            refresh_later(cluster)
            out[at] = RedisConnectionError(f"the cluster cannot serve this now: {reply}")
    return again, asking


async def _exchange(
    cluster: Any,
    node: Any,
    calls: list[tuple[Any, ...]],
    *,
    asking: list[bool],
    reply_timeout: float | None,
) -> list[Any]:
    """Send ``calls`` to ``node`` in one write (each marked in ``asking`` after an ASKING);
    their replies, or each one's error."""
    wire: list[tuple[Any, ...]] = []
    for call, ask in zip(calls, asking, strict=True):
        if ask:
            wire.append(("ASKING",))
        wire.append(call)
    conn = node.acquire_connection()
    try:
        await conn.send_packed_command(_packed(conn, wire), False)
        replies: list[Any] = []
        for call in wire:
            try:
                reply = await conn.read_response(timeout=reply_timeout)
            except ResponseError as exc:
                reply = exc
            if call[0] != "ASKING":
                replies.append(reply)
        node.release(conn)
        return replies
    except _NETWORK as exc:
        await conn.disconnect()
        node.release(conn)
        refresh_later(cluster)
        cluster.nodes_manager.move_node_to_end_of_cached_nodes(node.name)
        return [exc] * len(calls)
    except BaseException:
        await conn.disconnect()  # replies may still be in flight: not reusable as it is
        node.release(conn)
        raise


def _pack_command(self: Any, *args: Any) -> list[bytes]:
    # redis-py passes multi-word command names ("XGROUP CREATE") as one argument and
    # expects the packer to split them, as its own does.
    first = args[0]
    if (isinstance(first, str) and " " in first) or (isinstance(first, bytes) and b" " in first):
        args = (*first.split(), *args[1:])
    try:
        return [_pack(args)]
    except TypeError:  # an argument type hiredis does not take (memoryview): redis-py's way
        return list(self._python_pack_command(*args))


def _fast(base: Any) -> Any:
    if getattr(base, "_fast_packing", False):
        return base
    return type(
        f"Fast{base.__name__}",
        (base,),
        {
            "pack_command": _pack_command,
            "_python_pack_command": base.pack_command,
            "_fast_packing": True,
        },
    )


def fast_packing(client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """Make ``client``'s connections encode commands with hiredis; return the client.

    On a cluster client, the connections of every node it knows and will find.
    """
    if _pack is None:
        return client
    if is_cluster(client):
        cluster = cast(Any, client)
        kwargs = cluster.connection_kwargs
        kwargs["connection_class"] = _fast(kwargs["connection_class"])
        for node in [*cluster.nodes_manager.startup_nodes.values(),
                     *cluster.nodes_manager.nodes_cache.values()]:  # fmt: skip
            node.connection_class = _fast(node.connection_class)
        return client
    pool = client.connection_pool
    pool.connection_class = _fast(pool.connection_class)
    return client
