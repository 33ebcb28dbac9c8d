"""Commits handlers' batches, many per network round trip, each its own atomic script call.

Handlers finish at their own pace; each hands its batch (outputs + status + ack) to the
committer and awaits the result. The committer sends everything queued since its last send
in one pipeline, so under load one round trip carries dozens of commits while a lone commit
still goes out at once. A batch's failure (a version conflict, a lost claim) is that batch's
alone: it comes back to the handler that sent it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio

from streamcqrs.streams.commit import Batch, run_many

MAX_PER_ROUND = 256
"""Most commits in one pipeline: keeps one round trip's reply small and its latency low."""


class Committer:
    """Queue of batches to commit, and the task that sends them."""

    def __init__(self, client: redis.asyncio.Redis, log: Any) -> None:
        self.client = client
        self.log = log
        self._queue: list[tuple[Batch, asyncio.Future[list[Any]]]] = []
        self._wake = asyncio.Event()
        self._closing = False

    async def commit(self, batch: Batch) -> list[Any]:
        """Commit ``batch``; return its replies or raise what it failed with."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((batch, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        """Send queued batches until ``close`` is called and the queue is empty."""
        while not (self._closing and not self._queue):
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                round_, self._queue = self._queue[:MAX_PER_ROUND], self._queue[MAX_PER_ROUND:]
                await self._send(round_)

    async def _send(self, round_: list[tuple[Batch, asyncio.Future[list[Any]]]]) -> None:
        try:
            results = await run_many(self.client, [batch for batch, _ in round_])
        except Exception as exc:
            # Network trouble (the client already retried with backoff), or a failure of
            # the round as a whole. Whether the scripts ran is unknown; each handler
            # decides (a re-sent commit is refused by its OWNS check if the first one went
            # through, since its entry is no longer pending).
            for _, future in round_:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(round_, results, strict=True):
            if future.done():  # the handler was cancelled while its commit was in flight
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    def close(self) -> None:
        """Stop after sending what is queued."""
        self._closing = True
        self._wake.set()


__all__ = ["Committer"]
