"""The raw redis-py baseline: what a hand-written consumer loop does on the same server.

Throughput: ``XREADGROUP COUNT 100`` on one stream, then one pipeline with the ``XACK`` and
one ``XADD`` per entry to a second stream. Latency: the same loop under a paced producer,
measured from the producer's put to an observer seeing the output entry.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import redis

from bench.stats import ms_of, percentile, rate

IN, OUT, GROUP = "bench:in", "bench:out", "g"


def consume(
    url: str, total: int, deadline_s: float, ack_only: bool = False, elapsed: Any = None
) -> None:
    """The baseline consumer loop (runs in its own process, like a bot).

    ``ack_only``: read and ack, write nothing (the baseline of a handler that does nothing).
    ``elapsed`` (a shared double): set to the seconds from the first entry read to the last
    one acked.
    """
    client = redis.Redis.from_url(url)
    done = 0
    first = 0.0
    stop = time.monotonic() + deadline_s
    while (total <= 0 or done < total) and time.monotonic() < stop:
        reply = client.xreadgroup(GROUP, "c1", {IN: ">"}, count=100, block=100)
        if not reply:
            continue
        first = first or time.monotonic()
        entries = reply[0][1]
        pipe = client.pipeline(transaction=False)
        pipe.xack(IN, GROUP, *[eid for eid, _ in entries])
        if not ack_only:
            for _, fields in entries:
                pipe.xadd(OUT, fields)
        pipe.execute()
        done += len(entries)
    if elapsed is not None:
        elapsed.value = time.monotonic() - first
    client.close()


def _reset(client: redis.Redis) -> None:
    client.delete(IN, OUT)
    client.xgroup_create(IN, GROUP, id="0", mkstream=True)


def _start(
    url: str, total: int, deadline_s: float, ack_only: bool = False, elapsed: Any = None
) -> multiprocessing.process.BaseProcess:
    proc = multiprocessing.get_context("spawn").Process(
        target=consume, args=(url, total, deadline_s, ack_only, elapsed), daemon=True
    )
    proc.start()
    return proc


def throughput(url: str, n: int, payload: bytes) -> float:
    """Messages per second of the baseline loop over ``n`` pre-filled entries."""
    client = redis.Redis.from_url(url)
    _reset(client)
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(1000, n - start)):
            pipe.xadd(IN, {"data": payload})
        pipe.execute()
    proc = _start(url, n, 120)
    proc.join(130)
    first = client.xrange(OUT, count=1)
    last = client.xrevrange(OUT, count=1)
    produced = client.xlen(OUT)
    client.close()
    if produced != n:
        raise RuntimeError(f"baseline handled {produced} of {n}")
    return rate(n, ms_of(first[0][0]), ms_of(last[0][0]))


def ack_throughput(url: str, n: int, payload: bytes) -> float:
    """Messages per second of a raw XREADGROUP + XACK loop (no output) over ``n`` entries."""
    client = redis.Redis.from_url(url)
    _reset(client)
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(1000, n - start)):
            pipe.xadd(IN, {"data": payload})
        pipe.execute()
    elapsed = multiprocessing.get_context("spawn").Value("d", 0.0)
    proc = _start(url, n, 120, ack_only=True, elapsed=elapsed)
    proc.join(130)
    left = client.xpending(IN, GROUP)["pending"] + int(client.xinfo_groups(IN)[0]["lag"] or 0)
    client.close()
    if left:
        raise RuntimeError(f"the ack-only baseline left {left} of {n}")
    return n / max(elapsed.value, 1e-6)


def paced(
    put: callable,
    observe: callable,
    per_second: int,
    seconds: float,  # type: ignore[valid-type]
) -> list[float]:
    """Run ``put(t0_ns)`` at a steady rate while ``observe()`` yields t0s; latencies in ms."""
    total = int(per_second * seconds)
    latencies: list[float] = []
    done = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + seconds + 30
        while len(latencies) < total and time.monotonic() < deadline:
            seen = observe()
            now_ns = time.perf_counter_ns()
            latencies.extend((now_ns - t0) / 1e6 for t0 in seen)
        done.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / per_second - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        put(time.perf_counter_ns())
    done.wait(seconds + 35)
    return sorted(latencies)


def latency(url: str, per_second: int, seconds: float, payload: bytes) -> dict[str, float]:
    """p50/p99/p99.9 (ms) of the baseline loop from put to the output entry being seen."""
    client = redis.Redis.from_url(url)
    _reset(client)
    observer = redis.Redis.from_url(url)
    proc = _start(url, 0, seconds + 20)
    # Measure a loop that is running, not the consumer process starting up.
    client.xadd(IN, {"t0": 0, "data": payload})
    wait_for(lambda: client.xlen(OUT) >= 1, "the baseline consumer to start")
    cursor = client.xrevrange(OUT, count=1)[0][0]  # not "$": see every later entry

    def observe() -> list[int]:
        nonlocal cursor
        reply = observer.xread({OUT: cursor}, block=200, count=1000)
        out: list[int] = []
        for _, entries in reply or []:
            for eid, fields in entries:
                cursor = eid
                out.append(int(fields[b"t0"]))
        return out

    got = paced(
        lambda t0: client.xadd(IN, {"t0": t0, "data": payload}), observe, per_second, seconds
    )
    proc.terminate()
    proc.join(5)
    client.close()
    observer.close()
    return summarize(got, int(per_second * seconds))


def wait_for(check: callable, what: str, timeout: float = 30) -> None:  # type: ignore[valid-type]
    """Poll ``check()`` every 10 ms until true; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


def summarize(sorted_ms: list[float], expected: int) -> dict[str, float]:
    """Percentiles of sorted latencies, and how many of the expected were seen."""
    return {
        "p50": percentile(sorted_ms, 50),
        "p99": percentile(sorted_ms, 99),
        "p99.9": percentile(sorted_ms, 99.9),
        "seen": len(sorted_ms) / max(expected, 1),
    }
