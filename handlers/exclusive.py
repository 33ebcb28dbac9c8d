"""Exclusive access: one handler at a time per declared key, across every bot and process.

``@app.handler(..., exclusive="customer-number")`` (or ``Exclusive("customer-number",
ttl=5)``) makes the handler take a lease on that key before it runs (``streams.leases``),
renew it while it runs, and fence its commit with it: the commit that writes the handler's
outputs checks, in the same atomic script, that the lease is still this handler's and
releases it. So handlers of one key never overlap, and one that lost its lease (it ran past
the ttl, its bot paused) writes nothing; the commit is refused as a conflict and the handler
runs again under a fresh lease. A bot that dies holding a lease stops renewing it, and the
lease expires after its ttl. A handler that fails releases the lease at once (nothing of it
was committed).

Waiting for a key costs little: within one process one waiter per key polls the server,
backing off to 25 ms between polls. A handler that waits longer than the ttl for its key gives
its slot back (NotYet) and is delivered again shortly after.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers.errors import NotYet
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.keys import check_concern
from streamcqrs.streams.leases import PROCESS, Lease

if TYPE_CHECKING:
    from streamcqrs.handlers.context import Context

DEFAULT_TTL = 10.0
"""Seconds a lease lasts without renewal: how long a crashed holder keeps others waiting."""


@dataclass(frozen=True, slots=True)
class Exclusive:
    """A key only one handler may hold at a time, and how long its lease lasts unrenewed."""

    key: str
    ttl: float = DEFAULT_TTL
    """Seconds; a running handler renews it every third of that, a crashed one loses it."""

    def __post_init__(self) -> None:
        check_concern(self.key)  # the same rule: no braces, colons or spaces
        if self.ttl < 0.1:
            raise ConfigurationError(
                f"exclusive {self.key!r}: ttl must be at least 0.1 s, not {self.ttl}"
            )

    @classmethod
    def of(cls, given: str | Exclusive) -> Exclusive:
        """An Exclusive from a key name or itself."""
        return given if isinstance(given, Exclusive) else cls(given)


def lease_for(ctx: Context, exclusive: Exclusive, subsystem: str | None = None) -> Lease:
    """The lease of ``exclusive`` as ``ctx``'s delivery holds it.

    It lives in the partition of ``subsystem`` (default: the handler's input) that the key
    names. The token names this process and the input entry, so a re-run of the same
    delivery (after a conflict) takes its own lease again at once, and a bot that takes the
    entry over after a crash waits for the dead one's lease to expire.
    """
    sub = subsystem or ctx.spec.source.subsystem
    key = ctx.keys(sub).for_object(exclusive.key).lease(exclusive.key)
    token = f"{PROCESS}:{ctx.entry_id}:{ctx.message_id}"
    return Lease(ctx.client, key, token, max(1, int(exclusive.ttl * 1000)))


@contextlib.asynccontextmanager
async def held(
    ctx: Context, exclusive: Exclusive, subsystem: str | None = None
) -> AsyncIterator[Lease]:
    """Hold ``exclusive`` while the block runs; fence ``ctx``'s commit with it on success.

    Raises NotYet if the key stays taken for a whole ttl (the delivery comes back later).
    On an error in the block the lease is released at once and the error passes on.
    """
    from streamcqrs.handlers.context import IntentOutput

    lease = lease_for(ctx, exclusive, subsystem)
    if not await lease.wait(exclusive.ttl):
        raise NotYet(delay=0.05, reason=f"exclusive {exclusive.key!r} is held by another handler")
    try:
        async with lease.kept():
            yield lease
    except BaseException:
        with contextlib.suppress(Exception):
            await lease.release()
        raise

    def fence(commit: Commit) -> None:
        commit.fence(lease.key, lease.token)

    ctx.outputs.append(IntentOutput(fence))


def exclusive_handler(
    fn: Callable[[Any, Any], Awaitable[None] | None], exclusive: Exclusive, *, is_async: bool
) -> Callable[[Any, Context], Awaitable[None]]:
    """``fn`` run under ``exclusive`` (a plain ``def`` runs in a thread, the lease held)."""

    async def run_exclusive(message: Any, ctx: Context) -> None:
        async with held(ctx, exclusive):
            if is_async:
                await cast(Awaitable[None], fn(message, ctx))
            else:
                await asyncio.get_running_loop().run_in_executor(None, fn, message, ctx)

    run_exclusive.__name__ = getattr(fn, "__name__", "handler")
    run_exclusive.__qualname__ = getattr(fn, "__qualname__", run_exclusive.__name__)
    run_exclusive.__module__ = getattr(fn, "__module__", __name__)
    run_exclusive.__wrapped__ = fn  # type: ignore[attr-defined]
    return run_exclusive


__all__ = ["DEFAULT_TTL", "Exclusive", "exclusive_handler", "held", "lease_for"]
