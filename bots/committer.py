"""Commits handlers' results, a whole round of them in one script call.

Handlers finish at their own pace; each hands its commit (outputs + status + ack), or a whole
batch of commits, to the committer and awaits the result. The committer sends everything
queued since its last send in one script call, so under load one round trip and one script
run carry dozens of commits while a lone commit still goes out at once. A commit's refusal (a
version conflict, a lost entry) is that commit's alone: it comes back to whoever sent it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio

from streamcqrs.streams.commit import Commit, run_commits

MAX_PER_ROUND = 256
"""Most commits in one call: keeps one round's reply small and its latency low."""

Result = list[Any] | Exception
"""A commit's replies, or the error it failed with."""


class Committer:
    """Queue of commits to send, and the task that sends them."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        by_slot: bool = False,
        after: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.by_slot = by_slot
        """On a cluster: one script call per slot (a script touches one slot only)."""
        self.after = after
        """Called after a round that wrote to an outbox (wakes the relay)."""
        self._queue: list[tuple[list[Commit], asyncio.Future[list[Result]]]] = []
        self._queued = 0
        self._wake = asyncio.Event()
        self._closing = False

    async def commit(self, commit: Commit) -> list[Any]:
        """Commit ``commit``; return its replies or raise what it failed with."""
        (result,) = await self.commit_all([commit])
        if isinstance(result, Exception):
            raise result
        return result

    async def commit_all(self, commits: list[Commit]) -> list[Result]:
        """Commit each of ``commits`` on its own; their results in order (one future for all)."""
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._queue.append((commits, future))
        self._queued += len(commits)
        self._wake.set()
        return await future

    async def run(self) -> None:
        """Send queued commits until ``close`` is called and the queue is empty."""
        while not (self._closing and not self._queue):
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._send(self._take_round())

    def _take_round(self) -> list[tuple[list[Commit], asyncio.Future[list[Result]]]]:
        """Queued groups up to MAX_PER_ROUND commits (a bigger group goes whole)."""
        round_: list[tuple[list[Commit], asyncio.Future[list[Result]]]] = []
        count = 0
        while self._queue and (not round_ or count + len(self._queue[0][0]) <= MAX_PER_ROUND):
            group = self._queue.pop(0)
            round_.append(group)
            count += len(group[0])
        self._queued -= count
        return round_

    async def _send(self, round_: list[tuple[list[Commit], asyncio.Future[list[Result]]]]) -> None:
        commits = [commit for group, _ in round_ for commit in group]
        try:
            results: list[Result] = await run_commits(self.client, commits, by_slot=self.by_slot)
        except Exception as exc:
            # Network trouble (the client already retried with backoff). Whether the script
            # ran is unknown; each sender decides (a re-sent commit is refused by its
            # ownership check if the first one went through: its entry is no longer pending).
            results = [exc] * len(commits)
        if self.after is not None and any(c.outboxed for c in commits):
            self.after()
        at = 0
        for group, future in round_:
            mine, at = results[at : at + len(group)], at + len(group)
            if not future.done():  # the sender may have been cancelled meanwhile
                future.set_result(mine)

    def close(self) -> None:
        """Stop after sending what is queued."""
        self._closing = True
        self._wake.set()


__all__ = ["Committer", "Result"]
