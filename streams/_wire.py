"""Talking to the server below redis-py's command layer, where the hot path needs it.

redis-py encodes every argument and bookkeeps every command in Python; a bot sends one big
script call per round and reads batches of entries all the time, and that bookkeeping cost
more than the rest of a bot's work per entry. ``send_all`` writes packed commands to one
pooled connection and reads the replies in order; ``fast_packing`` makes a client's own
connections encode commands with hiredis (installed with redis-py's ``hiredis`` extra).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio
from redis.exceptions import ResponseError

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
    """
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


def fast_packing(client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """Make ``client``'s connections encode commands with hiredis; return the client."""
    if _pack is None:
        return client
    pool = client.connection_pool
    base = pool.connection_class
    if getattr(base, "_fast_packing", False):
        return client
    pool.connection_class = type(
        f"Fast{base.__name__}",
        (base,),
        {
            "pack_command": _pack_command,
            "_python_pack_command": base.pack_command,
            "_fast_packing": True,
        },
    )
    return client
