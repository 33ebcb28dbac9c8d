"""The bot: runs an app's handlers over their consumer groups in one process.

Per source (one consumer group on one stream partition) a reader asks XREADGROUP for as
many entries as there are free handler slots (``concurrency`` over the whole process), claims
them in the handling store, and starts one task per entry. A handler's outputs, its record's
new status and the XACK of its input are one ``commit.lua`` call, guarded by OWNS (the entry
is still pending on this consumer), so a crash before the commit redelivers the input with
nothing of the first attempt visible, and nothing is ever committed twice. Commits of many
handlers share a network round trip (``bots.committer``).

Failures are retried through the delayed set with exponential backoff; after the last attempt
the record is Failed and dead-lettered. Bad input is dead-lettered at once. Background tasks
move due delayed entries, take over entries of dead bots, keep long handlers' claims alive
and tidy dead consumers; ``stop`` drains in-flight work within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamcqrs.bots import recovery
from streamcqrs.bots.committer import Committer
from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.delayed import Mover
from streamcqrs.bots.logging import entry_logger, get_logger
from streamcqrs.bots.outcomes import Outcomes
from streamcqrs.bots.source import Delivery, Source, Verdict, sources
from streamcqrs.bots.tracking import Tracker
from streamcqrs.bots.wire import fast_packing
from streamcqrs.domain.errors import ConcurrencyConflict
from streamcqrs.handlers.registry import App
from streamcqrs.streams.connection import Settings, config_problem
from streamcqrs.streams.envelope import Entry, as_str
from streamcqrs.streams.errors import NotOwner
from streamcqrs.streams.handling import Claim
from streamcqrs.streams.keys import SubsystemKeys
from streamcqrs.streams.server import redact

NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
SILENCE_TIMEOUT = 30.0
"""Seconds a bot waits for a reply beyond a blocking read's own wait before giving up."""


class Bot:
    """One process's worth of consumers for ``app`` (see the module docstring)."""

    def __init__(
        self, app: App, config: BotConfig, client: redis.asyncio.Redis | None = None
    ) -> None:
        self.app = app
        self.config = config
        # No reply may be awaited forever: a connection that goes silent (a server lost
        # mid-reply) fails with a timeout after this long and is retried like any network
        # error, instead of stalling the commits or reads waiting on it. It is longer than
        # one blocking read (block_ms) plus a slow script.
        timeout = config.block_ms / 1000 + SILENCE_TIMEOUT
        settings = Settings(url=config.url, socket_timeout=timeout)
        self.client = fast_packing(client or settings.async_client())
        self.consumer = config.consumer_name()
        self.log = get_logger(app=app.name, consumer=self.consumer)
        self.sources = sources(app, config.only)
        # Every handler in flight may hold a connection (loads, reads), and so does each
        # source's blocked XREADGROUP: a pool smaller than that fails with "Too many
        # connections" under load instead of waiting its turn.
        pool = self.client.connection_pool
        needed = config.concurrency + len(self.sources) + 8
        if getattr(pool, "max_connections", needed) < needed:
            pool.max_connections = needed
        self.trackers = {
            (s.ref, s.concern): Tracker(self.client, s.keys, s.ref.kind, s.concern)
            for s in self.sources
        }
        keys_of = {name: SubsystemKeys(name, app.partitions_of(name)) for name in app.subsystems()}
        self.committer = Committer(self.client, self.log)
        self.outcomes = Outcomes(config, self.consumer, self.client, keys_of, self.log)
        self.mover = Mover(
            self.client,
            {(s.part, s.ref.kind) for s in self.sources},
            interval=config.mover_interval,
            log=self.log,
        )
        self.stopping = asyncio.Event()
        self.handled = 0
        self._held = 0  # deliveries started and not yet finished
        self._room = asyncio.Event()
        self._slots = asyncio.Semaphore(config.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: dict[tuple[str, str], tuple[Source, float]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading; ``run`` then drains in-flight work and returns."""
        if not self.stopping.is_set():
            self.log.info("stopping", in_flight=len(self._tasks))
        self.stopping.set()
        self._room.set()

    async def run(self) -> None:
        """Consume until ``stop``; then finish (or release) in-flight work and return."""
        if not self.sources:
            self.log.warning("no handlers to run", only=list(self.config.only))
        for source in self.sources:
            await self._ensure_group(source)
        self.log.info("started", sources=[str(s) for s in self.sources])
        committer = asyncio.create_task(self.committer.run())
        background = [
            *(
                asyncio.create_task(self._keep_running(f"reader {source}", self._read, source))
                for source in self.sources
            ),
            asyncio.create_task(self._keep_running("delayed mover", self.mover.run, self.stopping)),
            asyncio.create_task(self._keep_running("recovery", self._recover)),
        ]
        try:
            await self.stopping.wait()
        finally:
            self.stopping.set()
            await asyncio.gather(*background, return_exceptions=True)
            await self._drain()
            self.outcomes.close()
            self.committer.close()
            await committer
            self.log.info("stopped", handled=self.handled)

    async def _drain(self) -> None:
        """Let in-flight handlers finish within the grace period; release the rest."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.config.grace)
        if not self._tasks:
            return
        left = list(self._inflight.items())
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        by_source: dict[str, tuple[Source, list[str]]] = {}
        for (_key, entry_id), (source, _) in left:
            by_source.setdefault(str(source), (source, []))[1].append(entry_id)
        for source, ids in by_source.values():
            try:
                released = await recovery.release(self.client, source, self.consumer, ids)
                self.log.warning("released unfinished entries", source=str(source), ids=released)
            except (*NETWORK_ERRORS, ResponseError) as exc:
                self.log.warning("could not release entries", source=str(source), error=str(exc))

    async def _keep_running(
        self, name: str, loop: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        """Run a background loop; if it fails unexpectedly, log why and start it again."""
        pause = 0.5
        while not self.stopping.is_set():
            try:
                await loop(*args)
                return
            except Exception:
                self.log.exception("background task failed; restarting it", task=name,
                                   pause_s=pause)  # fmt: skip
                await self._pause(pause)
                pause = min(pause * 2, 30.0)

    async def _ensure_group(self, source: Source) -> None:
        """Create the source's consumer group if it is missing, waiting for the server.

        While the server does not answer, a warning names it (password hidden) at each
        backoff step; a refusal no retry fixes (a database it does not have, a refused
        login) raises ConfigurationError, which stops the worker for good.
        """
        pause = 0.1
        while not self.stopping.is_set():
            try:
                if await recovery.ensure_group(self.client, source):
                    self.log.info("created consumer group", source=str(source))
                return
            except (*NETWORK_ERRORS, ResponseError) as exc:
                problem = config_problem(exc, self.config.url or "")
                if problem is not None:
                    raise problem from None
                if isinstance(exc, ResponseError):
                    raise
                self.log.warning(
                    "cannot reach the server; retrying", url=redact(self.config.url or ""),
                    error=str(exc), pause_s=pause,
                )  # fmt: skip
                await self._pause(pause)
                pause = min(pause * 2, 5.0)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    # -- reading -----------------------------------------------------------------------------

    async def _room_to_read(self) -> int:
        """Wait until fewer than ``concurrency`` deliveries are held; how many to ask for.

        Not a reservation: a reader blocked in XREADGROUP must not hold slots other
        sources could use. Readers racing may together fetch a little more than the room;
        the extra wait for a handler slot (``_slots``), so at most ``concurrency``
        handlers run at once.
        """
        while not self.stopping.is_set():
            free = self.config.concurrency - self._held
            if free > 0:
                return min(free, self.config.batch)
            self._room.clear()
            await self._room.wait()
        return 0

    async def _read(self, source: Source) -> None:
        """Read new entries of one source and start their handlers, until stopping."""
        pause = 0.1
        while not self.stopping.is_set():
            room = await self._room_to_read()
            if not room:
                break
            try:
                reply = await self.client.xreadgroup(
                    source.group,
                    self.consumer,
                    {source.key: ">"},
                    count=room,
                    block=self.config.block_ms,
                )
                pause = 0.1
                # Without RESP3 the reply is [[key, [(id, fields), ...]]] (one stream read).
                found = cast(list[Entry], cast(list[Any], reply)[0][1]) if reply else []
                await self._dispatch(source, found, reclaim=False)
            except ResponseError as exc:
                if not recovery.is_nogroup(exc):
                    raise
                self.log.warning("consumer group is gone; recreating it", source=str(source))
                await self._ensure_group(source)
            except NETWORK_ERRORS as exc:
                self.log.warning("lost the server; retrying", error=str(exc), pause_s=pause)
                await self._pause(pause)
                pause = min(pause * 2, 5.0)

    async def _dispatch(
        self,
        source: Source,
        found: Sequence[Entry],
        *,
        reclaim: bool,
        delivered: Mapping[str, int] | None = None,
    ) -> None:
        """Classify entries, claim the ones to handle, start a task for each.

        ``delivered`` (taken-over entries): how often each was delivered. One delivered
        more than ``max_attempts`` times never got a commit: its handler crashes or hangs
        the bot, so it is failed and dead-lettered instead of run again.
        """
        counts = delivered or {}
        # An entry this bot is still running (its claim lapsed and XAUTOCLAIM handed it back
        # to us) must not start twice.
        deliveries = [
            source.classify(as_str(eid), raw)
            for eid, raw in found
            if (source.name, as_str(eid)) not in self._inflight
        ]
        to_handle = [d for d in deliveries if d.verdict is Verdict.HANDLE]
        tracker = self.trackers[(source.ref, source.concern)]
        claims = await tracker.claim(
            [(d.message_id, d.envelope.object_id if d.envelope else "") for d in to_handle],
            actor=self.consumer,
            reclaim=reclaim,
        )
        claimed = iter(claims)
        blocked = 0
        for delivery in deliveries:
            if delivery.verdict is Verdict.HANDLE:
                claim = next(claimed)
                if claim is Claim.BLOCKED:
                    blocked += 1  # stays pending: taken over again after the timeout
                    continue
                if claim is not Claim.CLAIMED:
                    delivery.verdict = Verdict.SKIP
                elif counts.get(delivery.entry_id, 0) > self.config.max_attempts:
                    delivery.crashes = counts[delivery.entry_id] - 1
            self._start(delivery)
        if blocked:
            self.log.info("handling is disabled for this stream; entries left pending",
                          source=str(source), count=blocked)  # fmt: skip

    def _start(self, delivery: Delivery) -> None:
        source = delivery.source
        if delivery.verdict is Verdict.HANDLE:
            self._held += 1  # skips and dead letters are quick acks: they take no room
        self._inflight[(source.name, delivery.entry_id)] = (source, time.monotonic())
        task = asyncio.create_task(self._handle(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- handling ----------------------------------------------------------------------------

    async def _handle(self, delivery: Delivery) -> None:
        """Run one delivery to its commit (or drop it if another bot took it over)."""
        source = delivery.source
        holds_slot = delivery.verdict is Verdict.HANDLE
        log = entry_logger(
            self.log,
            subsystem=source.ref.subsystem,
            stream=source.key,
            message_id=delivery.message_id,
            correlation_id=delivery.envelope.correlation_id if delivery.envelope else "",
        )
        tracker = self.trackers[(source.ref, source.concern)]
        try:
            if holds_slot:
                async with self._slots:
                    await self._attempt(delivery, tracker, log)
            else:
                await self._attempt(delivery, tracker, log)
        except NotOwner:
            log.warning("entry was taken over by another consumer; dropping this result")
        except asyncio.CancelledError:
            raise
        except Exception:  # never let one entry kill the bot: it stays pending, to be retried
            log.exception("could not commit; the entry stays pending for recovery")
        finally:
            self._inflight.pop((source.name, delivery.entry_id), None)
            if holds_slot:
                self._held -= 1
                self._room.set()

    async def _attempt(self, delivery: Delivery, tracker: Tracker, log: Any) -> None:
        """Run the handler and commit its outcome; re-run it after a version conflict."""
        for _ in range(self.config.conflict_retries + 1):
            batch = await self.outcomes.attempt(delivery, tracker, log)
            try:
                await self._commit(batch)
            except ConcurrencyConflict as exc:
                log.info("version conflict; running the handler again", error=str(exc))
                continue
            break
        else:
            failed = await self.outcomes.give_up_conflicts(delivery, tracker, log)
            await self._commit(failed)
        self.handled += delivery.verdict is Verdict.HANDLE

    async def _commit(self, batch: Any) -> None:
        """Commit through the committer; re-send after network trouble (OWNS makes it safe)."""
        pause = 0.1
        for _ in range(8):
            try:
                await self.committer.commit(batch)
                return
            except NETWORK_ERRORS:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
        await self.committer.commit(batch)

    # -- recovery ----------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Every third of the visibility timeout: keep own claims, take over dead ones."""
        tick = max(0.05, self.config.visibility_timeout / 3)
        last_tidy = time.monotonic()
        while not self.stopping.is_set():
            await self._pause(tick)
            if self.stopping.is_set():
                break
            try:
                await self._keep_claims(tick)
                for source in self.sources:
                    await self._take_over(source)
                if time.monotonic() - last_tidy > min(60.0, self.config.dead_consumer_after):
                    last_tidy = time.monotonic()
                    for source in self.sources:
                        await recovery.remove_dead_consumers(
                            self.client, source, self.consumer,
                            int(self.config.dead_consumer_after * 1000),
                        )  # fmt: skip
            except ResponseError as exc:
                if not recovery.is_nogroup(exc):
                    self.log.error("recovery failed", error=str(exc))
                # A missing group is recreated by its reader.
            except NETWORK_ERRORS as exc:
                self.log.warning("recovery lost the server", error=str(exc))

    async def _keep_claims(self, older_than: float) -> None:
        now = time.monotonic()
        by_source: dict[str, tuple[Source, list[str]]] = {}
        for (_key, entry_id), (source, started) in list(self._inflight.items()):
            if now - started >= older_than:
                by_source.setdefault(str(source), (source, []))[1].append(entry_id)
        for source, ids in by_source.values():
            await recovery.keep(self.client, source, self.consumer, ids)

    async def _take_over(self, source: Source) -> None:
        cursor = "0-0"
        for _ in range(100):  # bounded: a huge backlog is taken over across ticks
            room = await self._room_to_read()
            if not room:
                return
            cursor, found, deleted = await recovery.take_over(
                self.client,
                source,
                self.consumer,
                min_idle_ms=self.config.visibility_ms,
                count=room,
                start=cursor,
            )
            if found or deleted:
                self.log.info(
                    "took over entries", source=str(source), count=len(found), trimmed=deleted
                )
            counts = await recovery.delivery_counts(self.client, source, found)
            await self._dispatch(source, found, reclaim=True, delivered=counts)
            if cursor == "0-0":
                return


__all__ = ["Bot"]
