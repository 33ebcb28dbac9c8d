"""The bot: runs an app's handlers over their consumer groups in one process.

Per source (one consumer group on one stream partition) a reader asks XREADGROUP for as
many entries as there are free handler slots (``concurrency`` over the whole process), looks
up in one read which of them are already settled or disabled, and starts a task per entry.
The consumer group's pending entry is the claim: nothing is written before a handler runs.
A handler's outputs, its record's new status and the XACK of its input are one commit,
guarded by a check that the entry is still pending on this consumer, so a crash before the
commit redelivers the input with nothing of the first attempt visible, and nothing is ever
committed twice. The commits of a round go to the server in one script call
(``bots.committer``).

Failures are retried through the delayed set with exponential backoff; after the last attempt
the record is Failed and dead-lettered. Bad input is dead-lettered at once. Background tasks
move due delayed entries, take over entries of dead bots, keep long handlers' claims alive
and tidy dead consumers; ``stop`` drains in-flight work within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamcqrs.bots import recovery
from streamcqrs.bots.cleaner import Cleaner, cleaner_client
from streamcqrs.bots.committer import Committer, Result
from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.delayed import Mover, delayed_sets
from streamcqrs.bots.logging import entry_logger, get_logger
from streamcqrs.bots.observe import Observer
from streamcqrs.bots.outbox_relay import OutboxRelay, check_slots
from streamcqrs.bots.timers import Timers
from streamcqrs.domain.errors import ConcurrencyConflict
from streamcqrs.handlers import lifecycle
from streamcqrs.handlers.delivery import Delivery, Source, Verdict, sources
from streamcqrs.handlers.registry import App
from streamcqrs.handlers.runner import Attempt, Runner
from streamcqrs.streams import tracing
from streamcqrs.streams._replies import group_missing
from streamcqrs.streams._wire import fast_packing, send_all
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.connection import (
    Settings,
    config_problem,
    ensure_connections,
    is_cluster,
)
from streamcqrs.streams.envelope import Entry, as_str
from streamcqrs.streams.errors import InvalidTransition, NotOwner
from streamcqrs.streams.keys import SubsystemKeys
from streamcqrs.streams.scripts import script
from streamcqrs.streams.server import redact
from streamcqrs.streams.statuses import CLAIMABLE, Status
from streamcqrs.streams.tracing import trace_id

NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
SILENCE_TIMEOUT = 30.0
"""Seconds a bot waits for a reply beyond a blocking read's own wait before giving up."""
_HANDLEABLE = frozenset(s.value.encode() for s in (*CLAIMABLE, Status.RUNNING))
"""Stored statuses a delivered record may be handled from (Running: left by an operator or an
earlier version; the pending entry decides who handles it)."""


class Bot:
    """One process's worth of consumers for ``app`` (see the module docstring)."""

    def __init__(
        self,
        app: App,
        config: BotConfig,
        client: redis.asyncio.Redis | None = None,
        *,
        observer: Observer | None = None,
    ) -> None:
        self.app = app
        self.config = config
        # No reply may be awaited forever: a connection that goes silent (a server lost
        # mid-reply) fails with a timeout after this long and is retried like any network
        # error, instead of stalling the commits or reads waiting on it. It is longer than
        # one blocking read (block_ms) plus a slow script.
        timeout = config.block_ms / 1000 + SILENCE_TIMEOUT
        settings = Settings(url=config.url, socket_timeout=timeout, cluster=config.cluster)
        self.client = fast_packing(client or settings.async_client())
        self.consumer = config.consumer_name()
        self.log = get_logger(app=app.name, consumer=self.consumer)
        self.sources = [s.for_process(self.consumer) for s in sources(app, config.only)]
        # Every group of the app is made when any of its bots first starts, even by a bot
        # running --only other subsystems: a concern starting "now" then starts with the
        # app, not with whichever of its processes happened to start last.
        self._groups = [s for s in sources(app) if not s.broadcast]
        # Every handler in flight may hold a connection (loads, reads), and so does each
        # source's blocked XREADGROUP.
        ensure_connections(self.client, config.concurrency + len(self.sources) + 8)
        self.cluster = is_cluster(self.client)
        """On a cluster: outputs for other slots go through the outbox and the relay."""
        if self.cluster:
            check_slots(self.sources)
        keys_of = {name: SubsystemKeys(name, app.partitions_of(name)) for name in app.subsystems()}
        # Plain ``def`` handlers run here, not in asyncio's default executor: on shutdown a
        # handler still blocking past the grace period must not hold the process.
        self._threads = ThreadPoolExecutor(config.concurrency, thread_name_prefix="handler")
        self.resources = lifecycle.Resources()
        """What the app's startup hooks made in this process; handlers get it as
        ``ctx.resources``."""
        self.observer = observer or _observer(config)
        """Told of every committed delivery (metrics, commit spans): ``bots.observe``."""
        self.runner = Runner(
            self.client,
            keys_of,
            policy=config.policy,
            actor=self.consumer,
            executor=self._threads,
            home=(lambda d: d.source.part) if self.cluster else None,
            resources=self.resources,
        )
        self.relay = OutboxRelay(
            self.client, {s.part for s in self.sources}, holder=self.consumer,
            lease_s=min(config.visibility_timeout, 10.0), interval=config.mover_interval,
            max_attempts=config.max_attempts, log=self.log,
        ) if self.cluster else None  # fmt: skip
        self.committer = Committer(
            self.client, by_slot=self.cluster, after=self.relay.wake if self.relay else None
        )
        self.mover = Mover(
            self.client,
            delayed_sets(app, self.sources),
            interval=config.mover_interval,
            log=self.log,
        )
        schedules = [s for s in app.deferred.schedules.values()
                     if not config.only or s.target.subsystem in config.only]  # fmt: skip
        self.timers = Timers(self.client, schedules, keys_of, types=app.types, log=self.log)
        self.cleaner = Cleaner(cleaner_client(config, timeout) or self.client, app, keys_of,
                               consumer=self.consumer, log=self.log)  # fmt: skip
        self.stopping = asyncio.Event()
        self.handled = 0
        self._holding: set[int] = set()
        """Deliveries to handle whose handler has not finished (by id): the read-ahead."""
        self._room = asyncio.Event()
        self._slots = asyncio.Semaphore(config.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: dict[tuple[str, str], tuple[Source, float]] = {}
        self._waits: set[Any] = set()
        """Handler functions seen waiting on I/O: they run in tasks of their own."""

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
        for source in [*self.sources, *self._groups]:
            await self._ensure_group(source)
        await lifecycle.start(self.app.startup, self.resources)
        tracing.refresh()  # a startup hook may have set a tracer provider
        try:
            await self._consume()
        finally:
            await lifecycle.stop(self.app.shutdown, self.resources, self.log)

    async def _consume(self) -> None:
        """Read, handle and commit until ``stop``; then drain in-flight work."""
        self.log.info("started", sources=[str(s) for s in self.sources])
        committer = asyncio.create_task(self.committer.run())
        background = [
            *(
                asyncio.create_task(self._keep_running(f"reader {source}", self._read, source))
                for source in self.sources
            ),
            asyncio.create_task(self._keep_running("delayed mover", self.mover.run, self.stopping)),
            asyncio.create_task(self._keep_running("timers", self.timers.run, self.stopping)),
            asyncio.create_task(self._keep_running("cleaner", self.cleaner.run, self.stopping)),
            asyncio.create_task(self._keep_running("recovery", self._recover)),
        ]
        if self.relay is not None:
            relay = self._keep_running("outbox relay", self.relay.run, self.stopping)
            background.append(asyncio.create_task(relay))
        try:
            await self.stopping.wait()
        finally:
            self.stopping.set()
            await asyncio.gather(*background, return_exceptions=True)
            await self._drain()
            await self._remove_broadcast_groups()
            self._threads.shutdown(wait=False, cancel_futures=True)
            self.committer.close()
            await committer
            if self.relay is not None:
                await self.relay.finish()
            if self.cleaner.client is not self.client:
                await self.cleaner.client.aclose()
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

    async def _remove_broadcast_groups(self) -> None:
        """A broadcast group is this process's alone: it goes when the process stops."""
        for source in self.sources:
            if source.broadcast:
                try:
                    await recovery.remove_group(self.client, source)
                except (*NETWORK_ERRORS, ResponseError) as exc:
                    self.log.warning("could not remove broadcast group", source=str(source),
                                     error=str(exc))  # fmt: skip

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
                    where = {"0": "the beginning", "$": "now"}.get(
                        source.start_from, f"after {source.start_from}"
                    )
                    self.log.info("created consumer group", source=str(source), starts=where,
                                  broadcast=source.broadcast)  # fmt: skip
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
        """Wait until fewer than ``concurrency`` deliveries wait for or run their handler,
        and fewer than twice that are in flight; how many to ask for.

        A delivery whose handler finished stops counting against the first bound while its
        commit is on its way, so the next batch is read and handled while the server runs
        the last one's commits. Not a reservation: a reader blocked in XREADGROUP must not
        hold slots other sources could use. Readers racing may together fetch a little more
        than the room; the extra wait for a handler slot (``_slots``), so at most
        ``concurrency`` handlers run at once.
        """
        limit = self.config.concurrency
        while not self.stopping.is_set():
            free = min(limit - len(self._holding), 2 * limit - len(self._inflight))
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
                reader = read_in_turn if source.ordered else read_group
                found = await reader(
                    self.client, source, self.consumer, count=room, block_ms=self.config.block_ms
                )
                pause = 0.1
                await self._dispatch(source, found)
            except ResponseError as exc:
                if not group_missing(exc):
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
        delivered: Mapping[str, int] | None = None,
    ) -> None:
        """Classify entries, skip the settled ones, start a task for each of the rest.

        ``delivered`` (taken-over entries): how often each was delivered. One delivered
        more than ``max_attempts`` times never got a commit: its handler crashes or hangs
        the bot, so it is failed and dead-lettered instead of run again.
        """
        if not found:
            return
        counts = delivered or {}
        # An entry this bot is still running (its claim lapsed and XAUTOCLAIM handed it back
        # to us) must not start twice.
        deliveries = [
            source.classify(as_str(eid), raw, self.consumer)
            for eid, raw in found
            if (source.name, as_str(eid)) not in self._inflight
        ]
        to_handle = [d for d in deliveries if d.verdict is Verdict.HANDLE]
        blocked = await self._look_up(source, to_handle)
        if blocked:
            self.log.info("handling is disabled for this stream; entries left pending",
                          source=str(source), count=len(to_handle))  # fmt: skip
            deliveries = [d for d in deliveries if d.verdict is not Verdict.HANDLE]
        inline: list[Delivery] = []
        for delivery in deliveries:
            delivery.taken_over = delivered is not None
            crashed = counts.get(delivery.entry_id, 0) > self.config.max_attempts
            if crashed and delivery.verdict is Verdict.HANDLE:
                delivery.crashes = counts[delivery.entry_id] - 1
            spec = delivery.spec
            if spec is not None and spec.fn in self._waits:
                self._start(delivery)  # its handler waits on I/O: run it beside the others
            else:
                inline.append(delivery)
        if inline:
            self._start_batch(inline)

    async def _look_up(self, source: Source, deliveries: Sequence[Delivery]) -> bool:
        """Skip deliveries whose record is settled or disabled; True if the stream is disabled.

        One read (two HMGETs) per batch: a record already Completed or Failed for this
        concern (the same message put twice), or disabled, is acked without running its
        handler again.
        """
        if not deliveries or source.broadcast:
            return False
        part, kind = source.part, source.ref.kind
        records = [d.message_id for d in deliveries]
        statuses, flags = await send_all(
            self.client,
            [
                ("HMGET", part.handling_status(kind, source.concern), *records),
                ("HMGET", part.handling_flags(kind), part.stream_switch(source.concern), *records),
            ],
        )
        for reply in (statuses, flags):
            if isinstance(reply, Exception):
                raise reply
        if flags[0] == Status.DISABLED_FOR_STREAM.value.encode():
            return True
        for delivery, stored, flag in zip(deliveries, statuses, flags[1:], strict=True):
            settled = stored is not None and stored.partition(b"|")[0] not in _HANDLEABLE
            if settled or flag == Status.DISABLED_FOR_RECORD.value.encode():
                delivery.verdict = Verdict.SKIP
        return False

    def _hold(self, delivery: Delivery) -> None:
        source = delivery.source
        if delivery.verdict is Verdict.HANDLE:
            self._holding.add(id(delivery))  # skips and dead letters are quick acks: no room
        self._inflight[(source.name, delivery.entry_id)] = (source, time.monotonic())

    def _ran(self, delivery: Delivery) -> None:
        """Its handler finished: its room is free for reading ahead while it commits."""
        self._holding.discard(id(delivery))
        self._room.set()

    def _release(self, delivery: Delivery) -> None:
        self._inflight.pop((delivery.source.name, delivery.entry_id), None)
        self._ran(delivery)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, delivery: Delivery) -> None:
        self._hold(delivery)
        self._spawn(self._handle(delivery))

    def _start_batch(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self._hold(delivery)
        self._spawn(self._handle_batch(deliveries))

    def _log_for(self, delivery: Delivery) -> Any:
        envelope = delivery.input.envelope
        traced = trace_id(envelope.trace) if envelope and envelope.trace else ""
        return entry_logger(
            self.log,
            subsystem=delivery.source.ref.subsystem,
            stream=delivery.source.key,
            message_id=delivery.message_id,
            correlation_id=envelope.correlation_id if envelope else "",
            handler=delivery.spec.name if delivery.spec else "",
            type=envelope.type if envelope else "",
            attempt=delivery.attempt,
            trace_id=traced,
        )

    # -- handling ----------------------------------------------------------------------------

    async def _handle_batch(self, deliveries: list[Delivery]) -> None:
        """Run a read batch's deliveries one after another in this task, commit them together.

        Most handlers finish without waiting on I/O; running them here, with one commit call
        for the batch, spares each a task and a future of its own. The quick acks (skips,
        dead letters) go first. A handler that turns out to wait (on a load, an HTTP call)
        sends what ran before it to be committed and the rest of the batch to tasks of their
        own at once, so nothing waits behind it; it runs in its own task from then on.
        """
        todo = sorted(deliveries, key=lambda d: d.verdict is Verdict.HANDLE)
        ran: list[tuple[Delivery, Attempt, Any]] = []
        try:
            at = 0
            while at < len(todo):
                delivery = todo[at]
                at += 1
                log = self._log_for(delivery)
                try:
                    if delivery.verdict is not Verdict.HANDLE:
                        attempt = await self.runner.attempt(delivery, log)
                    else:
                        async with self._slots:
                            coro = self.runner.attempt(delivery, log)
                            try:
                                yielded = coro.send(None)
                            except StopIteration as stop:
                                attempt = stop.value
                            else:  # it waits: nothing else may wait behind it
                                self._move_aside(delivery, ran, todo[at:])
                                ran, todo = [], [delivery]
                                attempt = await _Rest(coro, yielded)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("could not handle; the entry stays pending for recovery")
                    continue
                ran.append((delivery, attempt, log))
            finished = {id(d) for d, _, _ in ran}  # _finish releases these; the rest below
            todo = [d for d in todo if id(d) not in finished]
            for delivery, _, _ in ran:
                self._ran(delivery)
            await self._finish(ran)
        finally:
            for delivery in todo:
                self._release(delivery)

    def _move_aside(
        self,
        waiting: Delivery,
        ran: list[tuple[Delivery, Attempt, Any]],
        rest: list[Delivery],
    ) -> None:
        """A batch's handler waits: commit what ran before it, start the rest in tasks."""
        if waiting.spec is not None:
            self._waits.add(waiting.spec.fn)
        if ran:
            for delivery, _, _ in ran:
                self._ran(delivery)
            self._spawn(self._finish(list(ran)))
        for delivery in rest:
            self._spawn(self._handle(delivery))

    async def _finish(self, ran: list[tuple[Delivery, Attempt, Any]]) -> None:
        """Commit attempts together, settle what each result says, release their entries."""
        try:
            sent = time.time_ns()
            results = await self._commit_all([attempt.commit for _, attempt, _ in ran])
            answered = time.time_ns()
            for (delivery, attempt, log), result in zip(ran, results, strict=True):
                if isinstance(result, (ConcurrencyConflict, InvalidTransition)):
                    await self._settle_alone(delivery, log)  # re-run, or ack a settled copy
                elif isinstance(result, NotOwner):
                    log.warning("entry was taken over by another consumer; dropping this result")
                elif isinstance(result, Exception):
                    log.error("could not commit; the entry stays pending for recovery",
                              error=str(result))  # fmt: skip
                else:
                    attempt.commit_ns = (sent, answered)
                    self.observer.settled(delivery, attempt)
                    self.handled += delivery.verdict is Verdict.HANDLE
        finally:
            for delivery, _, _ in ran:
                self._release(delivery)

    async def _settle_alone(self, delivery: Delivery, log: Any) -> None:
        """The one-delivery way: run again after a conflict, or ack an already settled copy."""
        try:
            attempt = await self.runner.handle(delivery, self._commit, log)
            self.observer.settled(delivery, attempt)
            self.handled += delivery.verdict is Verdict.HANDLE
        except NotOwner:
            log.warning("entry was taken over by another consumer; dropping this result")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not commit; the entry stays pending for recovery")

    async def _commit_all(self, commits: list[Commit]) -> list[Result]:
        """Commit many through the committer; re-send those that met network trouble."""
        results = await self.committer.commit_all(commits)
        pause = 0.1
        for _ in range(8):
            again = [at for at, r in enumerate(results) if isinstance(r, NETWORK_ERRORS)]
            if not again:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)
            retried = await self.committer.commit_all([commits[at] for at in again])
            for at, result in zip(again, retried, strict=True):
                results[at] = result
        return results

    async def _handle(self, delivery: Delivery) -> None:
        """Run one delivery to its commit (or drop it if another bot took it over)."""
        holds_slot = delivery.verdict is Verdict.HANDLE
        log = self._log_for(delivery)
        try:
            if holds_slot:
                async with self._slots:
                    attempt = await self.runner.handle(delivery, self._commit, log)
                self.handled += 1
            else:
                attempt = await self.runner.handle(delivery, self._commit, log)
            self.observer.settled(delivery, attempt)
        except NotOwner:
            log.warning("entry was taken over by another consumer; dropping this result")
        except asyncio.CancelledError:
            raise
        except Exception:  # never let one entry kill the bot: it stays pending, to be retried
            log.exception("could not commit; the entry stays pending for recovery")
        finally:
            self._release(delivery)

    async def _commit(self, commit: Commit) -> list[Any]:
        """Commit through the committer; re-send after network trouble (OWNS makes it safe)."""
        pause = 0.1
        for _ in range(8):
            try:
                return await self.committer.commit(commit)
            except NETWORK_ERRORS:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
        return await self.committer.commit(commit)

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
                    idle_ms = int(self.config.dead_consumer_after * 1000)
                    for source in self.sources:
                        await recovery.remove_dead_consumers(
                            self.client, source, self.consumer, idle_ms
                        )
                        if source.broadcast:
                            await recovery.remove_gone_broadcast_groups(
                                self.client, source, idle_ms
                            )
            except ResponseError as exc:
                if not group_missing(exc):
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
            # Never wait for room here: a bot whose handlers all wait (on a lease, say) must
            # still come back to keep their claims.
            limit = self.config.concurrency
            room = min(limit - len(self._holding), 2 * limit - len(self._inflight),
                       self.config.batch)  # fmt: skip
            if room <= 0 or self.stopping.is_set():
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
            await self._dispatch(source, found, delivered=counts)
            if cursor == "0-0":
                return


class _Rest:
    """Awaiting it finishes a coroutine that suspended on ``yielded``, in the current task."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # cancellation, thrown into the task: pass it on
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def _observer(config: BotConfig) -> Observer:
    """The observer ``config`` asks for: counting for Prometheus when metrics are on."""
    if not config.metrics:
        return Observer()
    from streamcqrs.bots.metrics import Metrics

    return Observer(Metrics())


async def read_group(
    client: redis.asyncio.Redis, source: Source, consumer: str, *, count: int, block_ms: int
) -> list[Entry]:
    """XREADGROUP new entries of ``source`` for ``consumer``, below redis-py's command layer.

    Raises the server's error (NOGROUP when the group is gone) as a ResponseError.
    """
    (reply,) = await send_all(
        client,
        [("XREADGROUP", "GROUP", source.group, consumer, "COUNT", count, "BLOCK", block_ms,
          "STREAMS", source.key, ">")],
    )  # fmt: skip
    if isinstance(reply, Exception):
        raise reply
    if not reply:
        return []
    # RESP2: [[key, entries]]; RESP3 (a connection that said HELLO 3): {key: entries}.
    found = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    out: list[Entry] = []
    for entry_id, flat in found:
        if flat is not None:
            it = iter(flat)
            out.append((entry_id, dict(zip(it, it, strict=True))))
    return out


async def read_in_turn(
    client: redis.asyncio.Redis, source: Source, consumer: str, *, count: int, block_ms: int
) -> list[Entry]:
    """Read new entries of an ordered ``source``, taking each object's turn in stream order.

    An entry whose object's turn another record holds is parked behind it by the script and
    not returned. With nothing new, waits (XREAD, up to ``block_ms``) for the next entry.
    """
    part, kind, concern = source.part, source.ref.kind, source.group
    keys = [source.key, part.order_turns(kind, concern), part.order_waiting(kind, concern),
            part.order_queue(kind, concern)]  # fmt: skip
    found, read, last = await script("read_in_turn").run(client, keys, [concern, consumer, count])
    if not read:
        await client.xread({source.key: last}, count=1, block=block_ms)
    out: list[Entry] = []
    for entry_id, flat in found:
        it = iter(flat)
        out.append((entry_id, dict(zip(it, it, strict=True))))
    return out


__all__ = ["Bot", "read_group", "read_in_turn"]
