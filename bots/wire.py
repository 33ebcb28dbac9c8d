"""Faster command encoding for the bot's asyncio client.

redis-py's asyncio connection encodes every argument in Python; a commit is one EVALSHA of
~50 arguments, and encoding them took more time than everything else a bot does per entry.
hiredis (installed with redis-py's ``hiredis`` extra) encodes a whole command in C. This swaps
it in for the connections of one client; without hiredis, the client is left as it is.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio

_pack: Any
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency; stay correct without it
    _pack = None


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


__all__ = ["fast_packing"]
