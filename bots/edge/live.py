"""Live push: a subsystem's events, or one view's new versions, as Server-Sent Events.

One process serves many listeners from one blocking read per stream (a ``Feed``): each new
entry is read once and handed to every listener whose filter takes it, so a thousand
browsers waiting on a thousand views cost one XREAD, not a thousand.

Resuming: every SSE event's ``id`` is where its listener stands (per partition, the last
entry sent, joined by ``,``). The first thing a listener gets is the comment ``: ready``:
from then on nothing written is missed. A reconnect with ``Last-Event-ID`` first gets what
was written after that (read with XRANGE), then live entries, each once: the listener is
attached to the feed before the catch-up read, and live entries the catch-up already sent
are dropped. A view's listener is sent the view's latest version on connect (if newer than
its ``Last-Event-ID``), so a UI waiting for a result gets it whether it came before or after.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack
import orjson
import redis.asyncio
from redis.exceptions import RedisError

from streamcqrs.streams import Kind, SubsystemKeys
from streamcqrs.streams._ids import MAX_ID, entry_key
from streamcqrs.streams.envelope import JSON, Entry, as_str, entries
from streamcqrs.streams.scripts import script

EntryRef = tuple[int, str, dict[bytes, bytes]]
"""(partition, entry id, fields) of one entry."""
QUEUE = 1000
"""Entries a slow listener may fall behind before it is dropped (it reconnects and resumes)."""


READY = b": ready\n\n"
"""An SSE comment sent once a listener is attached: everything written after it comes."""
KEEP_ALIVE = b": keep-alive\n\n"
"""An SSE comment, sent after 15 s without an entry: proxies keep an idle stream open."""


class Behind(Exception):
    """A listener fell too far behind; its connection ends and it resumes from its id."""


@dataclass(eq=False)
class Listener:
    """One SSE connection's queue of entries, and which ones it takes."""

    takes: Callable[[int, dict[bytes, bytes]], bool]
    queue: asyncio.Queue[EntryRef | None] = field(default_factory=lambda: asyncio.Queue(QUEUE))
    start: list[str] | None = None
    """Per partition, where the feed stood when this listener joined it: every entry after
    that comes through the queue."""

    def offer(self, item: EntryRef) -> None:
        if not self.takes(item[0], item[2]):
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    self.queue.get_nowait()
            self.queue.put_nowait(None)  # too far behind: the connection ends, and resumes


class Feed:
    """One blocking read over a stream's partitions, fanned out to its listeners."""

    def __init__(self, client: redis.asyncio.Redis, keys: SubsystemKeys, kind: Kind) -> None:
        self.client = client
        self.keys = keys
        self.kind = kind
        self.streams = [part.stream(kind) for part in keys.all()]
        self.listeners: set[Listener] = set()
        self.cursors: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    def attach(self, listener: Listener) -> None:
        """Join the feed; ``listener.start`` is set now (or when the feed has its cursors)."""
        self.listeners.add(listener)
        if self._started.is_set() and self._task is not None and not self._task.done():
            listener.start = [self.cursors[key] for key in self.streams]
            return
        if self._task is None or self._task.done():
            self._started.clear()
            self._task = asyncio.create_task(self._run())

    async def ready(self) -> None:
        """Wait until the feed's cursors are pinned (anything written after is fanned out)."""
        await self._started.wait()

    def detach(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    async def close(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        cursors = self.cursors
        for key in self.streams:
            last = entries(await self.client.xrevrange(key, "+", "-", count=1))
            cursors[key] = as_str(last[0][0]) if last else "0-0"
        for listener in self.listeners:
            listener.start = [cursors[key] for key in self.streams]
        self._started.set()
        partition = {key: n for n, key in enumerate(self.streams)}
        pause = 0.1
        while True:  # until the hub closes: an idle feed is one blocked read
            try:
                reply = await self.client.xread(cast(Any, cursors), count=500, block=1000)
                pause = 0.1
            except RedisError:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            for raw_key, found in cast(list[tuple[bytes, list[Entry]]], reply or []):
                key = as_str(raw_key)
                for entry_id, fields in found:
                    eid = as_str(entry_id)
                    cursors[key] = eid
                    item = (partition[key], eid, fields)
                    for listener in list(self.listeners):
                        listener.offer(item)


class Hub:
    """The feeds of one process, one per (subsystem, stream kind), started on demand."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.feeds: dict[tuple[str, Kind], Feed] = {}

    async def close(self) -> None:
        """Stop every feed (the gateway's shutdown)."""
        for feed in self.feeds.values():
            await feed.close()

    def feed(self, keys: SubsystemKeys, kind: Kind) -> Feed:
        made = self.feeds.get((keys.subsystem, kind))
        if made is None:
            made = self.feeds[(keys.subsystem, kind)] = Feed(self.client, keys, kind)
        return made

    async def events(
        self, keys: SubsystemKeys, types: frozenset[str], last_id: str
    ) -> AsyncIterator[bytes]:
        """SSE frames of the subsystem's events (of ``types``, all if empty), resumable."""
        resumed = _cursors(last_id, keys.partitions)

        def takes(_partition: int, fields: dict[bytes, bytes]) -> bool:
            return not types or as_str(fields.get(b"type", b"")) in types

        feed = self.feed(keys, Kind.EVENTS)
        listener = Listener(takes)
        feed.attach(listener)
        try:
            await feed.ready()
            assert listener.start is not None
            cursors = list(listener.start)
            yield READY
            if resumed is not None:
                cursors = list(resumed)
                for n, part in enumerate(keys.all()):
                    key = part.stream(Kind.EVENTS)
                    found = entries(await self.client.xrange(key, f"({cursors[n]}", "+"))
                    for entry_id, fields in found:
                        eid = as_str(entry_id)
                        cursors[n] = eid
                        if takes(n, fields):
                            yield _event_frame(",".join(cursors), eid, fields)
            async for n, eid, fields in _drain(listener):
                if not eid:
                    yield KEEP_ALIVE
                    continue
                if entry_key(eid) <= entry_key(cursors[n]):
                    continue  # sent by the catch-up already
                cursors[n] = eid
                yield _event_frame(",".join(cursors), eid, fields)
        finally:
            feed.detach(listener)

    async def view(self, keys: SubsystemKeys, object_id: str, last_id: str) -> AsyncIterator[bytes]:
        """SSE frames of one view's versions: the latest (if newer than ``last_id``), then each
        new one."""
        part = keys.for_object(object_id)
        number = part.partition
        obj = object_id.encode()
        sent = last_id if last_id and _is_entry_id(last_id) else "0-0"

        def takes(partition: int, fields: dict[bytes, bytes]) -> bool:
            return partition == number and fields.get(b"obj") == obj

        feed = self.feed(keys, Kind.VIEWS)
        listener = Listener(takes)
        feed.attach(listener)
        try:
            await feed.ready()
            yield READY
            found = await script("latest").run(
                self.client, [part.index(Kind.VIEWS), part.stream(Kind.VIEWS)], [object_id]
            )
            if found:
                entry_id, flat = found
                eid = as_str(entry_id)
                if entry_key(eid) > entry_key(sent):
                    sent = eid
                    fields = {flat[k]: flat[k + 1] for k in range(0, len(flat) - 1, 2)}
                    yield _view_frame(eid, fields)
            async for _n, eid, fields in _drain(listener):
                if not eid:
                    yield KEEP_ALIVE
                    continue
                if entry_key(eid) <= entry_key(sent):
                    continue
                sent = eid
                yield _view_frame(eid, fields)
        finally:
            feed.detach(listener)


async def _drain(listener: Listener) -> AsyncIterator[EntryRef]:
    while True:
        try:
            item = await asyncio.wait_for(listener.queue.get(), timeout=15.0)
        except TimeoutError:
            yield (-1, "", {})  # a heartbeat: keeps proxies from closing an idle stream
            continue
        if item is None:
            raise Behind("listener fell behind")
        yield item


def _is_entry_id(text: str) -> bool:
    ms, sep, seq = text.partition("-")
    return bool(sep) and ms.isdigit() and seq.isdigit() and int(ms) <= MAX_ID


def _cursors(last_id: str, partitions: int) -> list[str] | None:
    """Per-partition cursors from a ``Last-Event-ID``: None if absent (live only), from the
    start if it is not one this gateway gave out."""
    if not last_id:
        return None
    parts = last_id.split(",")
    if len(parts) != partitions or not all(_is_entry_id(p) for p in parts):
        return ["0-0"] * partitions
    return parts


def _frame(event: str, ident: str, data: bytes) -> bytes:
    lines = b"".join(b"data: " + line + b"\n" for line in data.split(b"\n"))
    return f"event: {event}\nid: {ident}\n".encode() + lines + b"\n"


def _event_frame(ident: str, entry_id: str, fields: dict[bytes, bytes]) -> bytes:
    payload: Any = None
    try:
        raw = fields.get(b"data", b"")
        payload = orjson.loads(raw) if fields.get(b"fmt") == JSON else msgpack.unpackb(raw)
    except (ValueError, msgpack.UnpackException):
        payload = None
    body = {
        "type": as_str(fields.get(b"type", b"")), "object_id": as_str(fields.get(b"obj", b"")),
        "message_id": as_str(fields.get(b"id", b"")), "entry_id": entry_id,
        "at_ms": int(fields.get(b"at", b"0") or 0), "data": payload,
    }  # fmt: skip
    seq = fields.get(b"seq")
    if seq is not None:
        body["version"] = int(seq)
    return _frame("event", ident, orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS))


def _view_frame(entry_id: str, fields: dict[bytes, bytes]) -> bytes:
    return _frame("view", entry_id, fields.get(b"data", b"null"))


__all__ = ["Behind", "Feed", "Hub", "Listener"]
