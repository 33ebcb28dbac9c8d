"""Running a handler to its commit: the one path the bot and ``HandlerTest`` both take.

``Runner.attempt`` turns a ``Delivery`` into the ``Commit`` its outcome writes; every commit
checks that its consumer still owns the input and acks it, so a delivery settles once:

==============  ==================================================================  ===========
outcome         what the commit writes                                              status
==============  ==================================================================  ===========
handled         the handler's outputs                                               Completed
``Retry``,      the input parked in its delayed set for this concern, due after     AvailableAfter
an error        ``delay`` (or exponential backoff with jitter)                      Failure
last attempt,   a dead letter with the reason and traceback                         Failed
``Fail``, a
declaration
mistake
``NotYet``      the input parked for this concern, due after ``delay``; no attempt  AvailableAfter
                is used up                                                          SelfCancellation
bad input       a dead letter with the reason and the raw entry (once per entry)    (none)
not ours        nothing                                                             (none)
==============  ==================================================================  ===========

``Runner.handle`` commits the attempt through the caller's commit function and runs the
handler again on fresh state after a version conflict.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, cast

import redis.asyncio
import structlog

from streamcqrs.domain.errors import ConcurrencyConflict, ConfigurationError
from streamcqrs.domain.policy import ExecutionPolicy
from streamcqrs.handlers.context import Context
from streamcqrs.handlers.delivery import Delivery, Verdict
from streamcqrs.handlers.errors import Fail, HandlerError, NotYet, Retry
from streamcqrs.handlers.lifecycle import Resources
from streamcqrs.streams import now_ms
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.deadletter import dead_letter
from streamcqrs.streams.errors import EncodeError, InvalidTransition
from streamcqrs.streams.keys import PartitionKeys, SubsystemKeys
from streamcqrs.streams.statuses import Action
from streamcqrs.streams.tracing import Span, tracer


class Expired(Fail):
    """The operation's execution policy says it is not to be handled any more."""


PERMANENT = (Fail, HandlerError, EncodeError)
"""Errors no retry can fix: the record is Failed and dead-lettered at once."""

CommitFn = Callable[[Commit], Awaitable[list[Any]]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failing handler is tried, and how long to wait between attempts."""

    max_attempts: int = 5
    """Attempts before a failing record is marked Failed and dead-lettered."""
    retry_base: float = 1.0
    """Seconds before the 2nd attempt; doubled for each further one (then jittered)."""
    retry_cap: float = 300.0
    """Longest wait between two attempts, in seconds."""
    retry_jitter: float = 0.25
    """Fraction of a retry delay taken off at random, so retries of a burst spread out."""
    conflict_retries: int = 5
    """Immediate re-runs of a handler whose append met a concurrency conflict."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 <= self.retry_jitter < 1:
            raise ConfigurationError(f"retry_jitter must be in [0, 1), got {self.retry_jitter}")

    def under(self, policy: ExecutionPolicy | None) -> RetryPolicy:
        """These settings with what an entry's execution policy sets instead."""
        if policy is None:
            return self
        given = {
            name: value
            for name in ("max_attempts", "retry_base", "retry_cap")
            if (value := getattr(policy, name)) is not None
        }
        return replace(self, **given) if given else self

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 = the first).

        Exponential (base * 2**(attempt-1), capped) with up to ``retry_jitter`` of it taken
        off at random: each delay stays above the previous one's jittered range when the
        jitter is under a half, so retries spread out yet still back off.
        """
        full = min(self.retry_cap, self.retry_base * 2.0 ** max(0, attempt - 1))
        return full * (1 - self.retry_jitter * random.random())


@dataclass(slots=True)
class Attempt:
    """One run of a delivery: the commit its outcome writes, and how it went."""

    commit: Commit
    outcome: Action | None
    """The status the commit settles (None: the entry is only acked, or dead-lettered)."""
    context: Context | None = None
    error: BaseException | None = None
    """What the handler raised (Retry, NotYet, Fail or a failure), if anything."""
    seconds: float = 0.0
    """How long the handler ran (0: it did not run)."""
    trace: str = ""
    """The ``traceparent`` of the handler's span (the input's when tracing is off)."""
    commit_ns: tuple[int, int] = (0, 0)
    """When its commit was sent and answered (``time.time_ns``), set by whoever committed."""


class Runner:
    """Runs deliveries' handlers and builds their commits, for one app on one client."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys_of: Mapping[str, SubsystemKeys],
        *,
        policy: RetryPolicy,
        actor: str,
        executor: Executor | None = None,
        home: Callable[[Delivery], PartitionKeys | None] | None = None,
        resources: Resources | None = None,
    ) -> None:
        self.client = client
        self.keys_of = keys_of
        self.policy = policy
        self.actor = actor
        self.executor = executor
        """Where plain ``def`` handlers run (None: asyncio's default executor)."""
        self._home = home
        self.resources = resources if resources is not None else Resources()
        """What the app's startup hooks made; handlers get it as ``ctx.resources``."""

    def _commit(self, d: Delivery) -> Commit:
        return Commit(d.input, home=self._home(d) if self._home else None)

    async def handle(self, d: Delivery, commit: CommitFn, log: Any = None) -> Attempt:
        """Run ``d`` and commit its outcome with ``commit``; after a version conflict, again.

        A record another delivery already settled (the same message put twice) is acked
        without its outputs. NotOwner (another consumer took the entry over) propagates.
        """
        log = log or structlog.get_logger("streamcqrs.handlers")
        for _ in range(self.policy.conflict_retries + 1):
            attempt = await self.attempt(d, log)
            try:
                sent = time.time_ns()
                await commit(attempt.commit)
                attempt.commit_ns = (sent, time.time_ns())
                return attempt
            except ConcurrencyConflict as exc:
                log.info("version conflict; running the handler again", error=str(exc))
            except InvalidTransition as exc:
                log.warning("record was already settled; acking this copy", error=str(exc))
                ack = _settled(d, Attempt(self._commit(d), None))
                await commit(ack.commit)
                return ack
        conflict = ConcurrencyConflict("", -1, -1)
        conflict.args = (f"version conflict on {self.policy.conflict_retries + 1} runs in a row",)
        failed = _settled(d, self.failure(d, log, conflict))
        await commit(failed.commit)
        return failed

    async def attempt(self, d: Delivery, log: Any) -> Attempt:
        """Run the handler (if the delivery is to be handled) and build its commit."""
        return _settled(d, await self._attempt(d, log))

    async def _attempt(self, d: Delivery, log: Any) -> Attempt:
        if d.verdict is Verdict.SKIP:
            return Attempt(self._commit(d), None)
        if d.verdict is Verdict.DEAD:
            log.warning("bad input; dead-lettering it", reason=str(d.error))
            return self._dead(d, str(d.error), d.error, attempts=0, once_per_entry=True)
        if d.crashes:
            d.attempt = max(d.attempt, self.policy.max_attempts)
            crash = HandlerError(
                f"delivered {d.crashes} times without a commit: handling it kills or hangs the "
                "bot (a crash, out of memory, a handler running past the visibility timeout "
                "without yielding); fix the handler, then retry the dead letter"
            )
            return self.failure(d, log, crash)
        assert d.spec is not None and d.input.envelope is not None
        span = _handler_span(d) if tracer() is not None else None
        clock = time.perf_counter()
        try:
            attempt = await self._run(d, log if span is None else log.bind(trace_id=span.trace_id),
                                      span.traceparent if span else "")  # fmt: skip
        except BaseException as exc:  # cancelled (a stop past the grace period)
            if span is not None:
                span.fail(exc)
                span.end()
            raise
        attempt.seconds = time.perf_counter() - clock
        attempt.trace = d.input.envelope.trace
        if span is not None:
            attempt.trace = span.traceparent
            span.outcome(attempt.outcome.value if attempt.outcome else "", attempt.error)
        return attempt

    async def _run(self, d: Delivery, log: Any, trace: str) -> Attempt:
        """Run the handler of ``d`` with a fresh context; build its commit."""
        assert d.spec is not None and d.input.envelope is not None
        started = now_ms()
        policy = d.policy
        if policy is not None and policy.expires_at is not None and started > policy.expires_at:
            late = started - policy.expires_at
            return self.failure(d, log, Expired(f"expired: {late} ms past its expiry"))
        ctx = Context(
            d.spec,
            d.input.envelope,
            entry_id=d.entry_id,
            attempt=d.attempt,
            client=self.client,
            keys_of=self.keys_of,
            types=d.source.types,
            logger=log,
            resources=self.resources,
            trace=trace,
        )
        timeout = policy.timeout if policy is not None else None
        try:
            if timeout is None:
                await self._invoke(d, ctx)
            else:
                try:
                    async with asyncio.timeout(timeout):
                        await self._invoke(d, ctx)
                except TimeoutError:
                    raise TimeoutError(
                        f"the handler ran past its {timeout} s timeout and was cancelled"
                    ) from None
            commit = self._commit(d)
            ctx.fill(commit)
        except Retry as asked:
            return self.failure(d, log, asked, delay=asked.delay, context=ctx, started_ms=started)
        except NotYet as wait:
            log.info("handler is not ready; looking again later", delay_s=wait.delay)
            commit = self._commit(d)
            commit.retry_later(now_ms() + int(wait.delay * 1000), d.attempt)
            self._settle(commit, d, Action.SELF_CANCEL, wait.reason or str(wait), started)
            return Attempt(commit, Action.SELF_CANCEL, ctx, wait)
        except Exception as exc:  # a handler's error: retried, then Failed and dead-lettered
            return self.failure(d, log, exc, context=ctx, started_ms=started)
        self._settle(commit, d, Action.COMPLETE, "", started)
        return Attempt(commit, Action.COMPLETE, ctx)

    async def _invoke(self, d: Delivery, ctx: Context) -> None:
        """Call the handler: an ``async def`` here, a plain ``def`` in the executor (past a
        timeout, a thread cannot be stopped: its attempt counts, the thread runs out).

        The thread runs in a copy of this task's context, so what the handler does there
        (a span it opens, a log it binds) sits under this attempt's handler span.
        """
        assert d.spec is not None
        if d.spec.is_async:
            await cast(Awaitable[None], d.spec.fn(d.message, ctx))
        else:
            loop = asyncio.get_running_loop()
            run = contextvars.copy_context().run
            await loop.run_in_executor(self.executor, run, d.spec.fn, d.message, ctx)

    def failure(
        self,
        d: Delivery,
        log: Any,
        error: BaseException,
        *,
        delay: float | None = None,
        context: Context | None = None,
        started_ms: int = 0,
    ) -> Attempt:
        """Retry after backoff; or, after the last attempt or a permanent error, Failed."""
        reason = f"{type(error).__name__}: {error}"
        permanent = isinstance(error, PERMANENT)
        policy = self.policy.under(d.policy)
        if permanent or d.attempt >= policy.max_attempts:
            why = reason if permanent else f"failed {d.attempt} attempts: {reason}"
            log.error("handler failed for good", attempt=d.attempt, error=reason)
            failed = self._dead(d, why, error, d.attempt)
            self._settle(failed.commit, d, Action.FAIL, reason, started_ms)
            return Attempt(failed.commit, Action.FAIL, context, error)
        wait = policy.delay(d.attempt) if delay is None else delay
        log.warning("handler failed; retrying", attempt=d.attempt, delay_s=round(wait, 3),
                    error=reason, exc_info=not isinstance(error, Retry))  # fmt: skip
        commit = self._commit(d)
        commit.retry_later(now_ms() + int(wait * 1000), d.attempt + 1)
        self._settle(commit, d, Action.RETRY, f"attempt {d.attempt}: {reason}", started_ms)
        return Attempt(commit, Action.RETRY, context, error)

    def _settle(
        self, commit: Commit, d: Delivery, action: Action, details: str, started_ms: int
    ) -> None:
        """The input record's outcome, with when and how its attempt started (a broadcast
        concern keeps no status: each process has a group of its own)."""
        if d.source.broadcast:
            return
        commit.settle(action, details=details, actor=self.actor, started_ms=started_ms,
                      attempt=d.attempt, taken_over=d.taken_over)  # fmt: skip

    def _dead(
        self,
        d: Delivery,
        reason: str,
        error: BaseException | None,
        attempts: int,
        *,
        once_per_entry: bool = False,
    ) -> Attempt:
        letter = dead_letter(
            reason=reason,
            stream=d.input.stream,
            entry_id=d.entry_id,
            raw=d.input.raw,
            concern=d.input.concern,
            error=error,
            attempts=attempts,
        )
        commit = self._commit(d)
        commit.dead_letter(letter, once_per_entry=once_per_entry)
        return Attempt(commit, None, error=error)


KEEPS_TURN = frozenset({Action.RETRY, Action.SELF_CANCEL})
"""Outcomes after which the record comes back: its object's turn stays with it."""


def _settled(d: Delivery, attempt: Attempt) -> Attempt:
    """An entry holding its object's turn (an ordered source) that is settled for good hands
    the turn on in the same commit."""
    if d.holds_turn and attempt.outcome not in KEEPS_TURN:
        attempt.commit.release_turn()
    return attempt


def _handler_span(d: Delivery) -> Span | None:
    """The span of one handler run, under the span that wrote its input."""
    assert d.spec is not None and d.input.envelope is not None
    span = Span.start(
        f"handle {d.source.ref}",
        parent=d.input.envelope.trace,
        kind="consumer",
        attributes={
            "messaging.system": "redis",
            "messaging.operation.type": "process",
            "messaging.destination.name": str(d.source.ref),
            "messaging.consumer.group.name": d.source.concern,
            "streamcqrs.handler": d.spec.name,
            "streamcqrs.attempt": d.attempt,
        },
    )
    if span is not None:
        span.named(d.input.envelope)
    return span


__all__ = ["KEEPS_TURN", "PERMANENT", "Attempt", "CommitFn", "Expired", "RetryPolicy", "Runner"]
