"""``python -m bench.shards``: throughput on a local cluster of 1, 2 and 3 shards, and where the
partitions went.

For each shard count S a cluster of S primaries (no replicas: they would only add copying
work on the same cores) takes N operations put over P = 12 partitions, and S bot processes
handle them. Two workloads:

* ``local``: each operation appends one event to its own aggregate, in its own partition:
  every commit stays in one slot (case 2 of ``python -m bench``, partitioned).
* ``relayed``: the same, plus a put into another subsystem's partition (``ledger``): that
  output goes through the partition's outbox and the bots' relays, forwarded once with a mark.

Per run: operations/s (first to last commit, server clocks), and per operation the bots' CPU,
the servers' CPU summed over the primaries (``INFO cpu``), and their commands. Then the
spread: how many of the 12 partitions (and of the operations) each shard served. On a
2-core machine every shard and bot shares the same two cores, so more shards cannot add
throughput here; the CPU per operation is what the capacity model in docs/design.md uses.
``--write`` puts the table into bench/RESULTS.md below the analysis marker.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from bench.apps import Job, Work, Worked
from bench.framework import bots
from bench.machine import describe
from bench.meter import process_cpu
from streamcqrs.handlers import App, Context
from streamcqrs.streams import Commit, Kind, Settings, SubsystemKeys
from streamcqrs.streams.cluster import SLOTS, LocalCluster
from streamcqrs.streams.envelope import encode

PARTITIONS = 12
"""Partitions of the bench subsystem (and of ledger): divisible by 1, 2 and 3 shards."""
PAYLOAD = "x" * 60
BENCH, LEDGER = SubsystemKeys("bench", PARTITIONS), SubsystemKeys("ledger", PARTITIONS)
SECTION = "## Shards (a local cluster)"
"""The heading of this benchmark's section in bench/RESULTS.md (below the analysis marker)."""

local = App("shards-local")
local.subsystem("bench", partitions=PARTITIONS)
relayed = App("shards-relayed")
relayed.subsystem("bench", partitions=PARTITIONS)
relayed.subsystem("ledger", partitions=PARTITIONS)


@local.handler(Work, stream="bench/client-ops", concern="work", appends=["bench"])
async def work(op: Work, ctx: Context) -> None:
    """One event on the operation's own aggregate: the commit stays in its slot."""
    ctx.append(Job(id=ctx.object_id), Worked(t0=op.t0, data=op.data))


@relayed.handler(Work, stream="bench/client-ops", concern="work", appends=["bench"],
                 writes=["ledger/client-ops"])  # fmt: skip
async def work_and_tell(op: Work, ctx: Context) -> None:
    """The same event, and a put into another subsystem's partition: through the relay."""
    ctx.append(Job(id=ctx.object_id), Worked(t0=op.t0, data=op.data))
    ctx.put("ledger/client-ops", Work(t0=op.t0, data=op.data), object_id=f"{ctx.object_id}.l")


@dataclass
class Run:
    """One workload on one cluster size."""

    workload: str
    shards: int
    ops_per_s: float
    bot_cpu_us: float
    server_cpu_us: float
    commands: float
    partitions: list[int]
    """Partitions of bench per shard."""
    ops: list[int]
    """Operations per shard."""
    server: str = ""
    """The server's name and version."""


def shard_of(part_tag: str, shards: int) -> int:
    """Which of ``shards`` equal slot ranges (as LocalCluster assigns them) holds a tag."""
    return key_slot(part_tag.strip("{}").encode()) * shards // SLOTS


def _fill(client: redis.Redis, n: int) -> list[int]:
    """Put n operations, one script call per partition; how many went to each partition."""
    by_part: dict[int, list[Any]] = {}
    for i in range(n):
        envelope = encode(Work(t0=0, data=PAYLOAD), object_id=str(i))
        by_part.setdefault(BENCH.for_object(str(i)).partition, []).append(envelope)
    counts = [0] * PARTITIONS
    for number, envelopes in by_part.items():
        counts[number] = len(envelopes)
        for start in range(0, len(envelopes), 500):
            commit = Commit()
            for envelope in envelopes[start : start + 500]:
                commit.put(BENCH, Kind.CLIENT_OPERATIONS, envelope)
            commit.run_sync(client)
    return counts


def _done(client: redis.Redis, keys: SubsystemKeys, kind: Kind) -> int:
    return sum(int(client.xlen(p.stream(kind))) for p in keys.all())


def _span_ms(client: redis.Redis, keys: SubsystemKeys, kind: Kind) -> tuple[int, int]:
    firsts, lasts = [], []
    for part in keys.all():
        first = client.xrange(part.stream(kind), count=1)
        last = client.xrevrange(part.stream(kind), count=1)
        if first and last:
            firsts.append(int(first[0][0].split(b"-")[0]))
            lasts.append(int(last[0][0].split(b"-")[0]))
    return min(firsts), max(lasts)


def _server(cluster: LocalCluster) -> tuple[float, int]:
    """CPU seconds and commands so far, summed over the primaries."""
    cpu, calls = 0.0, 0
    for node in cluster.primaries():
        with node.client() as client:
            info = client.info("cpu")
            cpu += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
            stats = client.info("commandstats")
            calls += sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
    return cpu, calls


def _wait(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def measure(workload: str, shards: int, n: int) -> Run:
    """One workload on a fresh cluster of ``shards`` primaries with as many bots."""
    app = "bench.shards:local" if workload == "local" else "bench.shards:relayed"
    done_keys, done_kind = (BENCH, Kind.EVENTS) if workload == "local" else (
        LEDGER, Kind.CLIENT_OPERATIONS)  # fmt: skip
    with LocalCluster(shards=shards, replicas=0) as cluster:
        with cluster.nodes[0].client() as probe:
            info = probe.info("server")
        server = f"{info.get('server_name', 'redis')} {info.get('valkey_version', '?')}"
        client = Settings(url=cluster.url).client()
        per_part = _fill(client, n)
        with bots(cluster.url, shards, app=app, args=("--log-level", "warning")) as proc:
            _wait(lambda: _done(client, done_keys, done_kind) >= 1, "the first commit", 60)
            cpu0, calls0, bot0 = *_server(cluster), process_cpu(proc.pid)
            before = _done(client, done_keys, done_kind)
            _wait(lambda: _done(client, done_keys, done_kind) >= n, f"{n} commits", 600)
            cpu1, calls1, bot1 = *_server(cluster), process_cpu(proc.pid)
        counted = max(1, n - before)
        first, last = _span_ms(client, done_keys, done_kind)
        client.close()
    parts, ops = [0] * shards, [0] * shards
    for part in BENCH.all():
        shard = shard_of(part.tag, shards)
        parts[shard] += 1
        ops[shard] += per_part[part.partition]
    return Run(
        workload, shards, n / max(0.001, (last - first) / 1000),
        (bot1 - bot0) / counted * 1e6, (cpu1 - cpu0) / counted * 1e6,
        (calls1 - calls0) / counted, parts, ops, server,
    )  # fmt: skip


def table(runs: list[Run]) -> str:
    """The runs as a Markdown table."""
    one = {r.workload: r.ops_per_s for r in runs if r.shards == 1}
    lines = [
        "| workload | shards (= bots) | op/s | vs 1 shard | bot CPU/op | server CPU/op "
        "| server cmds/op | partitions per shard | ops per shard |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in runs:
        ratio = r.ops_per_s / one[r.workload] if one.get(r.workload) else 0.0
        lines.append(
            f"| {r.workload} | {r.shards} | {r.ops_per_s:,.0f} | {ratio:.2f}x "
            f"| {r.bot_cpu_us:,.0f} us | {r.server_cpu_us:,.0f} us | {r.commands:.1f} "
            f"| {'/'.join(map(str, r.partitions))} | {'/'.join(map(str, r.ops))} |"
        )
    return "\n".join(lines)


def spread(subsystem: str = "bench") -> str:
    """How P partitions of one subsystem fall on 2 and 3 equal slot ranges (as LocalCluster
    and ``valkey-cli --cluster create`` assign them): per shard, and the busiest against
    an even share."""
    lines = ["| partitions | 2 shards | busiest/even | 3 shards | busiest/even |",
             "|---:|---|---:|---|---:|"]  # fmt: skip
    for count in (4, 12, 48, 96, 256):
        cells = []
        for shards in (2, 3):
            per = [0] * shards
            for number in range(count):
                per[shard_of(f"{{{subsystem}.{number}}}", shards)] += 1
            cells += ["/".join(map(str, per)), f"{max(per) / (count / shards):.2f}"]
        lines.append(f"| {count} | {' | '.join(cells)} |")
    return "\n".join(lines)


def write(text: str) -> None:
    """Put ``text`` into bench/RESULTS.md as this benchmark's section, below the marker."""
    from bench.__main__ import KEEP

    out = Path(__file__).with_name("RESULTS.md")
    head, marker, kept = out.read_text().partition(KEEP)
    if not marker:
        head, kept = head.rstrip("\n") + "\n\n", ""
    before, found, after = kept.partition(SECTION)
    if found:  # replace the old section up to the next one of the same level
        rest = after.split("\n## ", 1)
        after = "\n## " + rest[1] if len(rest) > 1 else ""
    section = f"{SECTION}\n\n{text}\n"
    out.write_text(f"{head}{KEEP}{before.rstrip()}\n\n{section}{after}")


def main(argv: list[str] | None = None) -> int:
    """Run both workloads on 1, 2 and 3 shards; print (and with --write store) the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--ops", type=int, default=0, help="operations per run (default 20000)")
    parser.add_argument("--write", action="store_true", help="store the table in RESULTS.md")
    args = parser.parse_args(argv)
    n = args.ops or (300 if args.smoke else 20_000)
    started = time.monotonic()
    runs = [measure(w, s, n) for w in ("local", "relayed") for s in (1, 2, 3)]
    command = "python -m bench.shards" + (" --smoke" if args.smoke else "")
    text = "\n".join([
        table(runs), "",
        "How partitions of `bench` spread over equal slot ranges (the ops follow them):", "",
        spread(), "",
        *describe(runs[0].server),
        f"command: `{command}` ({n:,} operations per run, {PARTITIONS} partitions)",
        f"wall time: {time.monotonic() - started:.0f} s",
    ])  # fmt: skip
    print(text)
    if args.write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
