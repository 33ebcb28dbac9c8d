"""``python -m bench``: every benchmark case in one run, printed as one table with ratios.

Each framework figure stands beside the raw redis-py baseline measured in the same run on
the same server. ``--smoke`` runs tiny sizes so CI keeps the scripts working (no timings are
judged there); ``--write`` also stores the table in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import aggregates, baseline, byhand, cleaner, framework, noop
from bench.machine import describe
from streamcqrs.streams import LocalServer

PAYLOAD = "x" * 60  # with the envelope, an operation of ~100 bytes of payload and ids


@dataclass
class Row:
    """One line of the table."""

    case: str
    figure: str
    value: float
    unit: str
    base: float | None = None
    target: str = ""

    def ratio(self) -> str:
        if self.base in (None, 0):
            return ""
        return f"{self.value / self.base:.3g}x"


def run(smoke: bool, only: set[str] | None) -> tuple[list[Row], list[str]]:
    """Run the cases on a private server; return the rows and the machine lines."""
    n = 2_000 if smoke else 50_000
    seconds = 1.0 if smoke else 10.0
    rows: list[Row] = []
    with LocalServer() as server:
        url = server.url
        info = redis.Redis.from_url(url).info("server")
        name = info.get("server_name", "redis")
        version = f"{name} {info.get('valkey_version') or info['redis_version']}"

        def want(case: str) -> bool:
            return only is None or case in only

        base_rate = baseline.throughput(url, n, PAYLOAD.encode())
        rows.append(Row("1 baseline", "XREADGROUP+XACK+XADD", base_rate, "msg/s"))
        if want("2"):
            rows += _case_2(url, n, base_rate, smoke)
        if want("8"):
            rows += _case_8(url, n, base_rate, rows)
        if want("9"):
            rows += _case_9(url, n)
        if want("3"):
            for per_second in (500, 5000):
                base = baseline.latency(url, per_second, seconds, PAYLOAD.encode())
                ours = framework.latency(url, per_second, seconds, PAYLOAD)
                for q in ("p50", "p99", "p99.9"):
                    target = "<= 2.00x" if (per_second, q) == (500, "p99") else ""
                    rows.append(
                        Row(f"3 latency @{per_second}/s", q, ours[q], "ms", base[q], target)
                    )
                rows.append(Row(f"3 latency @{per_second}/s", "seen", ours["seen"] * 100, "%",
                                base["seen"] * 100))  # fmt: skip
        if want("5"):
            events = 1_000 if smoke else 10_000
            loads = aggregates.load_times(url, events=events)
            rows.append(Row(f"5 load {events} events", "no snapshot", loads["without_ms"], "ms"))
            rows.append(Row(f"5 load {events} events", "snapshot/100", loads["with_ms"], "ms",
                            loads["without_ms"], "<= 0.02x"))  # fmt: skip
        if want("6"):
            two = framework.throughput(url, n, PAYLOAD, processes=2)
            one = next((r.value for r in rows if r.case.startswith("2 ")), None)
            rows.append(Row("6 op->event, 2 bots", "throughput", two["ops_per_s"], "op/s", one,
                            ">= 1.3x of case 2"))  # fmt: skip
            rows += cost_rows("6 op->event, 2 bots", two)
        if want("11"):
            rows += _case_11(url, 2_000 if smoke else 100_000)
        if want("4"):
            from bench import notification

            count = 200 if smoke else 5_000
            e2e = notification.end_to_end(url, count)
            case2 = next((r.value for r in rows if r.case.startswith("2 ")), None)
            rows.append(Row(f"4 notifications x{count}", "completed/s", e2e["per_s"], "n/s",
                            case2, ">= 0.10x of case 2"))  # fmt: skip
            rows.append(Row(f"4 notifications x{count}", "p99 put->terminal", e2e["p99"], "ms"))
    return rows, describe(version)


def _case_2(url: str, n: int, base_rate: float, smoke: bool) -> list[Row]:
    """Op -> event with one bot: throughput, what each op cost, the bot's and the server's
    memory."""
    case2 = framework.throughput(url, n, PAYLOAD, processes=1)
    rows = [Row("2 op->event, 1 bot", "throughput", case2["ops_per_s"], "op/s", base_rate,
                ">= 0.30x (aim 0.50x)")]  # fmt: skip
    rows += cost_rows("2 op->event, 1 bot", case2)
    rows.append(Row("7 memory", "peak RSS of the bot", case2["peak_rss_mb"], "MB", None,
                    "<= 80 MB"))  # fmt: skip
    rows.append(Row("10 server memory", "per op, case 2 (new aggregate, 1 event)",
                    case2["memory_b"], "B", None, "<= 1,500 B"))  # fmt: skip
    rows.append(Row("10 server memory", "keys per op, case 2", case2["keys"], "keys"))
    further = aggregates.append_memory(url, events=2_000 if smoke else 20_000)
    rows.append(Row("10 server memory", "per further event on an aggregate",
                    further["memory_b"], "B", None, "<= 400 B"))  # fmt: skip
    return rows


def _case_8(url: str, n: int, base_rate: float, rows: list[Row]) -> list[Row]:
    """Case 2's work by hand, and case 2 against it."""
    by_hand = byhand.throughput(url, n, PAYLOAD)
    out = [Row("8 same work by hand", "throughput", by_hand, "op/s", base_rate)]
    case2 = next((r.value for r in rows if r.case.startswith("2 ")), None)
    if case2 is not None:
        out.append(Row("8 same work by hand", "case 2 against it", case2, "op/s", by_hand,
                       ">= 0.50x"))  # fmt: skip
    return out


def _case_9(url: str, n: int) -> list[Row]:
    """A no-op handler against a raw XREADGROUP + XACK loop."""
    raw_ack = baseline.ack_throughput(url, n, PAYLOAD.encode())
    quiet = noop.throughput(url, n, PAYLOAD)
    return [
        Row("9 no-op handler", "raw XREADGROUP+XACK", raw_ack, "msg/s"),
        Row("9 no-op handler", "throughput", quiet["per_s"], "msg/s", raw_ack, ">= 0.35x"),
        *cost_rows("9 no-op handler", quiet),
    ]


def _case_11(url: str, n: int) -> list[Row]:
    """Server memory per handled operation, without and with one cleaner cycle."""
    kept = cleaner.memory(url, n, PAYLOAD, clean=False)
    clean = cleaner.memory(url, n, PAYLOAD, clean=True)
    case = f"11 memory x{n}"
    return [
        Row(case, "per op, no cleaner", kept["memory_b"], "B"),
        Row(case, "per op, after one cleaner cycle", clean["memory_b"], "B", kept["memory_b"]),
        Row(case, "keys per op, no cleaner", kept["keys"], "keys"),
        Row(case, "keys per op, after the cycle", clean["keys"], "keys", kept["keys"]),
        Row(case, "cleaner cycle", clean["cycle_s"], "s"),
    ]


def cost_rows(case: str, figures: dict[str, float]) -> list[Row]:
    """What each operation of a case cost: bot and server CPU, server commands."""
    return [
        Row(case, "bot CPU per op", figures.get("bot_cpu_us", figures.get("client_cpu_us", 0)),
            "us"),
        Row(case, "server CPU per op", figures["server_cpu_us"], "us"),
        Row(case, "server commands per op", figures["commands"], ""),
    ]  # fmt: skip


KEEP = "<!-- kept by --write: analysis -->"
"""Marker in bench/RESULTS.md: ``--write`` replaces the table above it, keeps what follows."""


def table(rows: list[Row], machine: list[str], command: str) -> str:
    """The rows as a Markdown table, with the machine and the command."""
    lines = [
        "| case | figure | streamcqrs | baseline | ratio | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        base = "" if r.base is None else f"{r.base:,.2f}"
        lines.append(
            f"| {r.case} | {r.figure} | {r.value:,.2f} {r.unit} | {base} "
            f"| {r.ratio()} | {r.target} |"
        )
    return "\n".join([*lines, "", *machine, f"command: `{command}`"])


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print (and optionally write) the table."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--only", nargs="*", help="case numbers to run (the baseline always runs)")
    parser.add_argument("--write", action="store_true", help="store the table in bench/RESULTS.md")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows, machine = run(args.smoke, set(args.only) if args.only else None)
    command = "python -m bench" + (" --smoke" if args.smoke else "")
    text = table(rows, machine, command) + f"\nwall time: {time.monotonic() - started:.0f} s"
    print(text)
    if args.write:
        out = Path(__file__).with_name("RESULTS.md")
        # The written analysis below the marker outlives a new table.
        kept = out.read_text().partition(KEEP)[2] if out.exists() else ""
        head = f"# Benchmark results\n\nLatest run of `{command}`:\n\n{text}\n"
        out.write_text(head + (f"\n{KEEP}{kept}" if kept else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
