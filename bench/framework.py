"""Cases 2, 3, 6 and 7: bots handling operations, measured from outside their processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import psutil
import redis
import redis.asyncio

from bench.apps import Work
from bench.baseline import paced, summarize, wait_for
from bench.meter import Meter, empty, process_cpu
from bench.stats import ms_of, rate
from streamcqrs.streams import Commit, Kind, Subsystem, SubsystemKeys
from streamcqrs.streams.envelope import encode

OPS = SubsystemKeys("bench").partition(0).stream(Kind.CLIENT_OPERATIONS)
EVENTS = SubsystemKeys("bench").partition(0).stream(Kind.EVENTS)


@contextmanager
def bots(
    url: str,
    processes: int = 1,
    concurrency: int = 64,
    *,
    app: str = "bench.apps:app",
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``streamcqrs run APP`` (the bench app by default) until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcqrs", "run", app,
         "--processes", str(processes), "--concurrency", str(concurrency), *args],
        env={**os.environ, **(env or {}), "REDIS_URL": url},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _fill(url: str, n: int, data: str) -> None:
    client = redis.Redis.from_url(url)
    keys = SubsystemKeys("bench")
    for start in range(0, n, 500):
        commit = Commit()
        for i in range(start, min(n, start + 500)):
            envelope = encode(Work(t0=0, data=data), object_id=str(i))
            commit.put(keys, Kind.CLIENT_OPERATIONS, envelope)
        commit.run_sync(client)
    client.close()


def _wait_events(client: redis.Redis, n: int, timeout: float) -> None:
    wait_for(lambda: client.xlen(EVENTS) >= n, f"{n} committed events", timeout)


def _peak_rss(root: int, stop: threading.Event, out: list[int]) -> None:
    peak = 0
    while not stop.is_set():
        try:
            children = psutil.Process(root).children(recursive=True)
            for child in children:
                peak = max(peak, child.memory_info().rss)
        except psutil.Error:
            pass
        stop.wait(0.05)
    out.append(peak)


def throughput(
    url: str, n: int, data: str, processes: int = 1, *, app: str = "bench.apps:app"
) -> dict[str, float]:
    """Operations/s committed by ``processes`` bots over ``n`` pre-put operations, and what
    each operation cost: bot and server CPU, server commands, server memory and keys.

    CPU and commands are counted from the first committed event (not the bots' start-up);
    memory and keys from before the operations were put, so they are the whole footprint
    of an operation: its entry, its event, its aggregate and its handling status.
    """
    client = redis.Redis.from_url(url)
    empty(client)
    footprint = Meter(client)
    footprint.start()
    _fill(url, n, data)
    rss: list[int] = []
    stop = threading.Event()
    work = Meter(client)
    with bots(url, processes, app=app) as proc:
        watcher = threading.Thread(target=_peak_rss, args=(proc.pid, stop, rss), daemon=True)
        watcher.start()
        _wait_events(client, 1, timeout=60)
        work.start()
        started = process_cpu(proc.pid)
        before = client.xlen(EVENTS)
        _wait_events(client, n, timeout=240)
        spent = process_cpu(proc.pid) - started
        costs = work.stop(n - before, client_cpu=spent)
        stop.set()
        watcher.join(5)
    memory = footprint.stop(n)
    first, last = client.xrange(EVENTS, count=1), client.xrevrange(EVENTS, count=1)
    client.close()
    return {
        "ops_per_s": rate(n, ms_of(first[0][0]), ms_of(last[0][0])),
        "peak_rss_mb": rss[0] / 2**20,
        "bot_cpu_us": costs["client_cpu_us"],
        "server_cpu_us": costs["server_cpu_us"],
        "commands": costs["commands"],
        "memory_b": memory["memory_b"],
        "keys": memory["keys"],
    }


def latency(url: str, per_second: int, seconds: float, data: str) -> dict[str, float]:
    """p50/p99/p99.9 (ms) from a paced put to seeing the committed event."""
    client = redis.Redis.from_url(url)
    empty(client)
    bench = Subsystem("bench", redis.asyncio.Redis.from_url(url), sync_client=client)
    writer = bench.sync_writer("client-ops")
    observer = redis.Redis.from_url(url)
    counter = iter(range(10**9))
    with bots(url, 1):
        # Measure a bot that is running, not one starting up.
        writer.put(Work(t0=0, data=data), object_id="warm-up")
        wait_for(lambda: client.xlen(EVENTS) >= 1, "the bot to start", timeout=60)
        cursor = client.xrevrange(EVENTS, count=1)[0][0]  # not "$": see every later entry

        def observe() -> list[int]:
            nonlocal cursor
            reply = observer.xread({EVENTS: cursor}, block=200, count=1000)
            out: list[int] = []
            for _, entries in reply or []:
                for eid, fields in entries:
                    cursor = eid
                    out.append(int(msgpack.unpackb(fields[b"data"])["t0"]))
            return out

        got = paced(
            lambda t0: writer.put(Work(t0=t0, data=data), object_id=next(counter)),
            observe, per_second, seconds,
        )  # fmt: skip
    client.close()
    observer.close()
    return summarize(got, int(per_second * seconds))
