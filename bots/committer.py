"""Commits handlers' results, a whole round of them in one script call.

Handlers finish at their own pace; each hands its commit (outputs + status + ack) to the
committer and awaits the result. The committer sends everything queued since its last send
in one script call, so under load one round trip and one script run carry dozens of commits
while a lone commit still goes out at once. A commit's refusal (a version conflict, a lost
entry) is that commit's alone: it comes back to the handler that sent it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio

from streamcqrs.streams.commit import Commit, run_commits

MAX_PER_ROUND = 256
"""Most commits in one call: keeps one round's reply small and its latency low."""


class Committer:
    """Queue of commits to send, and the task that sends them."""

    def __init__(self, client: redis.asyncio.Redis, *, by_slot: bool = False) -> None:
        self.client = client
        self.by_slot = by_slot
        """On a cluster: one script call per slot (a script touches one slot only)."""
        self._queue: list[tuple[Commit, asyncio.Future[list[Any]]]] = []
        self._wake = asyncio.Event()
        self._closing = False

    async def commit(self, commit: Commit) -> list[Any]:
        """Commit ``commit``; return its replies or raise what it failed with."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((commit, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        """Send queued commits until ``close`` is called and the queue is empty."""
        while not (self._closing and not self._queue):
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                round_, self._queue = self._queue[:MAX_PER_ROUND], self._queue[MAX_PER_ROUND:]
                await self._send(round_)

    async def _send(self, round_: list[tuple[Commit, asyncio.Future[list[Any]]]]) -> None:
        try:
            results = await run_commits(
                self.client, [commit for commit, _ in round_], by_slot=self.by_slot
            )
        except Exception as exc:
            # Network trouble (the client already retried with backoff). Whether the script
            # ran is unknown; each handler decides (a re-sent commit is refused by its
            # ownership check if the first one went through: its entry is no longer pending).
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
