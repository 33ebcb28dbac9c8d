"""Bearer tokens for the gateway: named, with scopes, stored only as their SHA-256.

A token is shown once, when it is made (``streamcqrs token create NAME --scope ...``); the
server keeps its hash, its name and its scopes, so a leaked database does not leak tokens.
Revoking (``streamcqrs token revoke NAME``) takes effect on the next request.

A scope is ``ACTION:SUBSYSTEM``, the subsystem ``*`` for all of them:

=============  ======================================================================
``execute``    POST operations into the subsystem's client-operation stream, GET status
``views``      GET a view as stored; live view versions over SSE
``events``     live events over SSE
``subscribe``  make and end subscriptions to channels of the subsystem (thin payloads)
``full-data``  subscriptions that get the events' data too (with ``subscribe``)
``realtime``   subscribe to and trigger realtime events (MDriven's) of any event id
=============  ======================================================================
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import orjson
import redis.asyncio

from streamcqrs.bots.edge.messages import key_hash
from streamcqrs.domain.errors import ConfigurationError

ACTIONS = ("execute", "views", "events", "subscribe", "full-data", "realtime")
TOKENS = "gateway"
"""The subsystem whose keys hold the tokens (``{gateway.0}:tokens``)."""
PREFIX = "scq_"


def check_scope(scope: str) -> str:
    """A valid ``ACTION:SUBSYSTEM`` scope, or ConfigurationError naming the actions."""
    action, sep, subsystem = scope.partition(":")
    if not sep or action not in ACTIONS or not subsystem or any(c in subsystem for c in "{} "):
        raise ConfigurationError(
            f"scope {scope!r} must be ACTION:SUBSYSTEM (SUBSYSTEM may be *), ACTION one of "
            f"{', '.join(ACTIONS)}"
        )
    return scope


@dataclass(frozen=True, slots=True)
class Token:
    """What a token may do, and whose it is."""

    name: str
    scopes: tuple[str, ...]
    created_ms: int = 0

    def allows(self, action: str, subsystem: str) -> bool:
        """True if a scope grants ``action`` on ``subsystem`` (or on every subsystem)."""
        return f"{action}:{subsystem}" in self.scopes or f"{action}:*" in self.scopes


def token_keys(subsystem: str = TOKENS) -> tuple[str, str]:
    """The token table's keys: hash -> record, and name -> hash."""
    tag = f"{{{subsystem}.0}}"
    return f"{tag}:tokens", f"{tag}:tokens:names"


class Tokens:
    """Make, check, list and revoke the gateway's bearer tokens on one server."""

    def __init__(self, client: redis.asyncio.Redis, *, subsystem: str = TOKENS) -> None:
        self.client = client
        self.by_hash, self.by_name = token_keys(subsystem)
        """Hashes: token SHA-256 -> JSON {name, scopes, created_ms}; name -> SHA-256."""

    async def create(self, name: str, scopes: list[str]) -> str:
        """A new token named ``name`` with ``scopes``; the token itself, shown only now.

        ConfigurationError if the name is taken (revoke it first) or a scope is malformed.
        """
        if not name or len(name) > 100:
            raise ConfigurationError("a token needs a name of 1 to 100 characters")
        checked = tuple(sorted({check_scope(s) for s in scopes}))
        if not checked:
            raise ConfigurationError("a token needs at least one --scope ACTION:SUBSYSTEM")
        token = PREFIX + secrets.token_urlsafe(32)
        digest = key_hash(token)
        record = orjson.dumps({"name": name, "scopes": checked,
                               "created_ms": int(time.time() * 1000)})  # fmt: skip
        if not await self.client.hsetnx(self.by_name, name, digest):
            raise ConfigurationError(f"a token named {name!r} exists; revoke it first")
        await self.client.hset(self.by_hash, digest, record)
        return token

    async def check(self, token: str) -> Token | None:
        """The token's grants, or None for an unknown or revoked token."""
        found = await self.client.hget(self.by_hash, key_hash(token))
        if found is None:
            return None
        body = orjson.loads(found)
        return Token(body["name"], tuple(body["scopes"]), int(body.get("created_ms", 0)))

    async def revoke(self, name: str) -> bool:
        """Revoke the token named ``name``; False if there is none."""
        digest = await self.client.hget(self.by_name, name)
        if digest is None:
            return False
        await self.client.hdel(self.by_hash, digest)
        await self.client.hdel(self.by_name, name)
        return True

    async def list(self) -> list[Token]:
        """Every token's name and scopes (never the token), by name."""
        found = await self.client.hgetall(self.by_hash)
        tokens = [orjson.loads(v) for v in found.values()]
        return sorted(
            (Token(t["name"], tuple(t["scopes"]), int(t.get("created_ms", 0))) for t in tokens),
            key=lambda t: t.name,
        )


__all__ = ["ACTIONS", "PREFIX", "TOKENS", "Token", "Tokens", "check_scope", "token_keys"]
