"""The cleaner: applies an app's retention policies, one leader at a time, so memory stays bounded.

Every bot runs a cleaner loop. When a cycle is due (``app.cleaner(every=...)`` seconds after
the last one finished, by a record every bot reads), the first bot to take the app's cleaner
lease leads that cycle, renewing the lease between steps, and lets it go after. For each policy
(``app.retention``, see ``handlers.retention``) and each partition of its stream, a cycle
forgets the statuses of records done for longer than ``keep_done_for``, trims the stream by
age and length (with index entries and done statuses of what it trims), and compacts the
aggregates of a subsystem behind their snapshots (``streams.cleaning`` does each step). What
it never touches: Failed records and their history (an operator resets or archives them),
disabled records, entries a consumer group has not read or still has pending.

A leader that dies stops renewing; after the lease's ttl another bot takes it and, the last
cycle being unfinished, runs a whole cycle at once. Every step's writes are conditional
or idempotent, so the result is what one uninterrupted cycle would have left.
``streamcqrs clean MODULE:APP`` runs one cycle from the command line.

On a server with the generated ACL users the cleaner logs in as ``<app>-cleaner`` (bots:
``--cleaner-user``; ``streamcqrs clean --username``): the bot user may not trim or forget. A
cleaner the server refuses says once how to fix it, and the bot goes on handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio
import redis.exceptions

from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.settings import CLEANER_PASSWORD
from streamcqrs.domain.errors import StreamCQRSError
from streamcqrs.handlers.acl import cleaner_user
from streamcqrs.handlers.registry import App
from streamcqrs.handlers.retention import Retention
from streamcqrs.streams import cleaning, now_ms
from streamcqrs.streams._replies import permission_refused
from streamcqrs.streams.connection import Settings
from streamcqrs.streams.envelope import as_str
from streamcqrs.streams.errors import PermissionDenied
from streamcqrs.streams.keys import SubsystemKeys, cleaner_lease, cleaner_state
from streamcqrs.streams.leases import PROCESS, Lease


def cleaner_client(config: BotConfig, socket_timeout: float) -> redis.asyncio.Redis | None:
    """A connection of the cleaner's own, logged in as ``config.cleaner_user`` (the password
    from ``STREAMCQRS_CLEANER_PASSWORD``); None without a cleaner user."""
    if not config.cleaner_user:
        return None
    settings = Settings(url=config.url, username=config.cleaner_user,
                        password=os.environ.get(CLEANER_PASSWORD), socket_timeout=socket_timeout)
    return settings.async_client()


class LeaderLost(StreamCQRSError):
    """The cleaner's lease went to another bot mid-cycle: stop, the new leader goes on."""


def leader_key(app: str) -> str:
    """The app's cleaner lease (a string key; the holder's token, expiring)."""
    return cleaner_lease(app)


def state_key(app: str) -> str:
    """Hash: when the app's last cleaner cycle started and finished, and what it removed."""
    return cleaner_state(app)


@dataclass
class Report:
    """What one cycle removed."""

    forgotten: int = 0
    """Handling statuses (with their histories) of done records."""
    trimmed: int = 0
    """Stream entries."""
    unindexed: int = 0
    """Index entries (latest by id, by tag, by object) of trimmed entries."""
    compacted: int = 0
    """Aggregate events dropped behind snapshots."""
    seconds: float = 0.0


class Cleaner:
    """One bot's cleaner: leads when it holds the lease (see the module docstring)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        app: App,
        keys_of: Mapping[str, SubsystemKeys],
        *,
        consumer: str,
        log: Any,
    ) -> None:
        self.client = client
        self.app = app
        self.settings = app.deferred.cleaner
        self.policies: list[Retention] = sorted(app.deferred.retention.values(),
                                                key=lambda p: str(p.stream))  # fmt: skip
        self.keys_of = keys_of
        self.log = log
        token = f"{PROCESS}:{consumer}"
        self.lease = Lease(client, leader_key(app.name), token, int(self.settings.lease_ttl * 1000))
        self.cycles = 0

    def _keys(self, subsystem: str) -> SubsystemKeys:
        found = self.keys_of.get(subsystem)
        return found or SubsystemKeys(subsystem, self.app.partitions_of(subsystem))

    def _known(self, policy: Retention) -> list[str]:
        """The app's own concerns on the policy's stream (groups may not exist yet)."""
        return sorted({c for (ref, c) in self.app.groups() if ref == policy.stream})

    async def _between(self) -> None:
        """Between steps: keep the lease (or stop) and spare the server."""
        if not await self.lease.renew():
            raise LeaderLost(f"lost the cleaner lease of {self.app.name!r} to another bot")
        if self.settings.pause:
            await asyncio.sleep(self.settings.pause)

    async def cycle(self) -> Report:
        """Apply every retention policy once (the caller holds the lease)."""
        started = time.monotonic()
        now = now_ms()
        state = state_key(self.app.name)
        await self.client.hset(state, mapping={"started": now, "leader": self.lease.token})
        report = Report()
        batch = self.settings.batch
        for policy in self.policies:
            ref = policy.stream
            for part in self._keys(ref.subsystem).all():
                if policy.keep_done_for is not None:
                    cutoff = now - int(policy.keep_done_for * 1000)
                    stream = part.stream(ref.kind)
                    known = self._known(policy)
                    for concern in await cleaning.concerns(self.client, stream, known):
                        report.forgotten += await cleaning.forget_done(
                            self.client, part, ref.kind, concern, cutoff, batch=batch,
                            between=self._between,
                        )  # fmt: skip
                        await self._between()
                if policy.trims:
                    trimmed, unindexed, forgotten = await cleaning.trim(
                        self.client, part, ref.kind, now_ms=now,
                        max_age_ms=None if policy.max_age is None else int(policy.max_age * 1000),
                        maxlen=policy.maxlen, known_concerns=self._known(policy), batch=batch,
                        between=self._between,
                    )  # fmt: skip
                    report.trimmed += trimmed
                    report.unindexed += unindexed
                    report.forgotten += forgotten
                    await self._between()
                if policy.compact_aggregates:
                    report.compacted += await cleaning.compact(
                        self.client, part, batch=batch, between=self._between
                    )
                    await self._between()
        report.seconds = round(time.monotonic() - started, 3)
        await self.client.hset(state, mapping={
            "finished": now_ms(), **{k: str(v) for k, v in asdict(report).items()},
        })  # fmt: skip
        self.cycles += 1
        self.log.info("cleaner cycle done", **asdict(report))
        return report

    async def _due(self) -> bool:
        """True if no cycle finished within ``every`` (or the last one never finished)."""
        started, finished = await self.client.hmget(state_key(self.app.name), "started", "finished")
        if started is None or finished is None:
            return True
        if int(as_str(finished)) < int(as_str(started)):
            return True  # the last leader died mid-cycle
        return now_ms() - int(as_str(finished)) >= self.settings.every * 1000

    async def once(self, wait: float) -> Report | None:
        """Lead one cycle now: take the lease (waiting up to ``wait`` s), clean, let go.

        None if another bot held the lease all that time.
        """
        if not await self.lease.wait(wait, pause=(0.05, 0.5)):
            return None
        try:
            return await self.cycle()
        finally:
            with contextlib.suppress(redis.exceptions.RedisError):
                await self.lease.release()

    async def run(self, stopping: asyncio.Event) -> None:
        """Lead a cycle whenever one is due and the lease is free, until ``stopping``.

        The lease is held for a cycle only: between cycles any bot (or ``streamcqrs clean``)
        may take it, and the shared record of when the last cycle finished keeps them from
        cleaning more often than ``every``.
        """
        if not self.policies:
            return
        tick = min(self.settings.lease_ttl / 3, self.settings.every)
        told = False
        while not stopping.is_set():
            wait = tick
            try:
                if await self._due() and await self.lease.take():
                    try:
                        if await self._due():
                            await self.cycle()
                    finally:
                        await self.lease.release()
            except LeaderLost as lost:
                self.log.warning("cleaner stopped mid-cycle", reason=str(lost))
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                self.log.warning("cleaner lost the server; retrying")
            except (redis.exceptions.ResponseError, PermissionDenied) as exc:
                if not permission_refused(str(exc)):
                    raise
                # The bot's own user may not clean (least privilege): say once how to fix
                # it, keep handling, and look again every cycle in case the grant comes.
                if not told:
                    self.log.error("the server refused the cleaner; this bot does not clean",
                                   reason=str(exc), fix=self._fix())  # fmt: skip
                told, wait = True, self.settings.every
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=wait)

    def _fix(self) -> str:
        """What to do when the server refuses the cleaner."""
        user = cleaner_user(self.app)
        return (
            f"run the bots with --cleaner-user {user} (or STREAMCQRS_CLEANER_USER) and its "
            f"password in {CLEANER_PASSWORD}, or run 'streamcqrs clean MODULE:APP --username "
            f"{user}' on a schedule; 'streamcqrs acl MODULE:APP' prints {user}"
        )


__all__ = ["Cleaner", "LeaderLost", "Report", "cleaner_client", "leader_key", "state_key"]
