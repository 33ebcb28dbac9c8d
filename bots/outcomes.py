"""What one attempt at a delivery commits: the handler's outputs, or a retry, or a dead letter.

Every batch built here starts with OWNS (the entry is still pending on this consumer) and ends
with the XACK of the entry, so whatever the outcome, it and the ack land together:

=============  ==================================================================  ==========
outcome        besides the ack                                                      status
=============  ==================================================================  ==========
success        the handler's outputs (events, puts, views, delayed puts)           Completed
error, tries   the same envelope parked in the delayed set, attempt + 1, due       retry
left           after exponential backoff with jitter (or ``Retry(delay=)``)
error, last    a dead letter with the error, traceback and attempts                Failed
``NotYet``     the same envelope parked for ``delay`` s, attempt unchanged          self-cancel
bad input      a dead letter with the reason and the raw entry                      (none)
not ours       nothing (another concern's retry, a type this concern skips)         (none)
=============  ==================================================================  ==========
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import redis.asyncio

from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.source import Delivery, Verdict
from streamcqrs.bots.tracking import Outcome, Tracker
from streamcqrs.domain.errors import ConcurrencyConflict
from streamcqrs.handlers.context import Context
from streamcqrs.handlers.errors import HandlerError, NotYet, Retry
from streamcqrs.streams.commit import Batch, OnExisting
from streamcqrs.streams.deadletter import add_dead_letter, dead_letter
from streamcqrs.streams.delayed import Delayed
from streamcqrs.streams.envelope import now_ms
from streamcqrs.streams.keys import SubsystemKeys


class Outcomes:
    """Runs a delivery's handler once and builds the batch its outcome commits."""

    def __init__(
        self,
        config: BotConfig,
        consumer: str,
        client: redis.asyncio.Redis,
        keys_of: Mapping[str, SubsystemKeys],
        log: Any,
    ) -> None:
        self.config = config
        self.consumer = consumer
        self.client = client
        self.keys_of = keys_of
        self.log = log
        # Plain ``def`` handlers run here, not in asyncio's default executor: on shutdown
        # a handler still blocking past the grace period must not hold the process.
        self._threads = ThreadPoolExecutor(config.concurrency, thread_name_prefix="handler")

    def close(self) -> None:
        """Let go of the handler threads without waiting for ones still blocked."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _batch(self, d: Delivery) -> Batch:
        source = d.source
        batch = Batch(home=source.part if self.config.cluster else None)
        batch.owns(source.key, source.group, self.consumer, [d.entry_id])
        return batch

    def _ack(self, batch: Batch, d: Delivery) -> Batch:
        batch.ack(d.source.key, d.source.group, [d.entry_id])
        return batch

    def _without_handler(self, d: Delivery, tracker: Tracker, log: Any) -> Batch | None:
        """The commit of a delivery whose handler is not to run, or None if it is."""
        if d.verdict is Verdict.SKIP:
            return self._ack(self._batch(d), d)
        if d.verdict is Verdict.DEAD:
            log.warning("bad input; dead-lettering it", reason=str(d.error))
            return self._dead(d, str(d.error), d.error, attempts=0, once_per_entry=True)
        if d.crashes:
            d.attempt = max(d.attempt, self.config.max_attempts)
            crash = HandlerError(
                f"delivered {d.crashes} times without a commit: handling it kills or hangs the "
                "bot (a crash, out of memory, a handler running past the visibility timeout "
                "without yielding); fix the handler, then retry the dead letter"
            )
            return self.failure(d, tracker, log, crash)
        return None

    async def attempt(self, d: Delivery, tracker: Tracker, log: Any) -> Batch:
        """Run the handler (if the delivery is to be handled) and build its commit."""
        settled = self._without_handler(d, tracker, log)
        if settled is not None:
            return settled
        assert d.spec is not None and d.envelope is not None
        ctx = Context(
            d.spec,
            d.envelope,
            entry_id=d.entry_id,
            attempt=d.attempt,
            client=self.client,
            keys_of=self.keys_of,
            types=d.source.types,
            logger=log,
        )
        try:
            if d.spec.is_async:
                await cast(Awaitable[None], d.spec.fn(d.message, ctx))
            else:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._threads, d.spec.fn, d.message, ctx)
            batch = self._batch(d)
            ctx.compile(batch)
        except Retry as asked:
            return self.failure(d, tracker, log, asked, delay=asked.delay)
        except NotYet as wait:
            log.info("handler is not ready; looking again later", delay_s=wait.delay)
            batch = self._park(d, d.attempt, wait.delay)
            tracker.record(batch, d.source.part, d.message_id, Outcome.SELF_CANCEL,
                           details=wait.reason or str(wait), actor=self.consumer)  # fmt: skip
            return self._ack(batch, d)
        except Exception as exc:  # a handler's error: retried, then Failed and dead-lettered
            return self.failure(d, tracker, log, exc)
        tracker.record(batch, d.source.part, d.message_id, Outcome.COMPLETE, actor=self.consumer)
        return self._ack(batch, d)

    def failure(
        self,
        d: Delivery,
        tracker: Tracker,
        log: Any,
        error: BaseException,
        *,
        delay: float | None = None,
    ) -> Batch:
        """Retry after backoff, or after the last attempt mark Failed and dead-letter."""
        reason = f"{type(error).__name__}: {error}"
        if d.attempt >= self.config.max_attempts:
            log.error("handler failed for good", attempt=d.attempt, error=reason)
            batch = self._dead(d, f"failed {d.attempt} attempts: {reason}", error, d.attempt)
            tracker.record(batch, d.source.part, d.message_id, Outcome.FAIL,
                           details=reason, actor=self.consumer)  # fmt: skip
            return batch
        wait = self.config.retry_delay(d.attempt) if delay is None else delay
        log.warning("handler failed; retrying", attempt=d.attempt, delay_s=round(wait, 3),
                    error=reason, exc_info=not isinstance(error, Retry))  # fmt: skip
        batch = self._park(d, d.attempt + 1, wait)
        tracker.record(batch, d.source.part, d.message_id, Outcome.RETRY,
                       details=f"attempt {d.attempt}: {reason}", actor=self.consumer)  # fmt: skip
        return self._ack(batch, d)

    async def give_up_conflicts(self, d: Delivery, tracker: Tracker, log: Any) -> Batch:
        """The batch after every immediate re-run met a version conflict: a failed attempt."""
        error = ConcurrencyConflict("?", -1, -1)
        error.args = (f"version conflict on {self.config.conflict_retries + 1} runs in a row",)
        return self.failure(d, tracker, log, error)

    def _park(self, d: Delivery, attempt: int, delay: float) -> Batch:
        """The entry's envelope back into the delayed set, for this concern only."""
        assert d.envelope is not None
        source = d.source
        batch = self._batch(d)
        member = Delayed(
            source.ref.kind.value, d.envelope, OnExisting.WRITE, 1, attempt, source.concern
        )
        batch.delay(source.part.delayed(source.ref.kind), now_ms() + int(delay * 1000),
                    member.pack())  # fmt: skip
        return batch

    def _dead(
        self,
        d: Delivery,
        reason: str,
        error: BaseException | None,
        attempts: int,
        *,
        once_per_entry: bool = False,
    ) -> Batch:
        source = d.source
        letter = dead_letter(
            reason=reason,
            stream=source.key,
            entry_id=d.entry_id,
            raw=d.raw,
            concern=source.concern,
            error=error,
            attempts=attempts,
        )
        batch = self._batch(d)
        add_dead_letter(batch, source.part, letter, once_per_entry=once_per_entry)
        return self._ack(batch, d)


__all__ = ["Outcomes"]
