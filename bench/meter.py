"""What a case cost the server and the bots: CPU, commands and memory per operation.

``Meter`` reads the server's ``INFO cpu``, ``INFO commandstats`` and ``INFO memory`` around
a case, and the CPU time of the bot processes (psutil) while they are alive, so every case
can print its cost per operation beside its throughput.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psutil
import redis


def _cpu(info: dict[str, float]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    # Calls the measurement itself makes are left out.
    ignore = {"cmdstat_info", "cmdstat_config|resetstat", "cmdstat_xlen", "cmdstat_dbsize"}
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ignore)


def empty(client: redis.Redis, timeout: float = 60.0) -> None:
    """Empty the server and wait until it has freed what it held, so the next memory reading
    counts only the case's own data (Valkey 8 frees a plain FLUSHALL in the background)."""
    client.execute_command("FLUSHALL", "SYNC")
    deadline = time.monotonic() + timeout
    while int(client.info("memory").get("lazyfree_pending_objects", 0)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server did not free its flushed data in {timeout} s")
        time.sleep(0.05)


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its children (bots run under a supervisor)."""
    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


@dataclass
class Meter:
    """Server CPU, commands and memory used between ``start`` and ``stop``."""

    client: redis.Redis
    cpu: float = 0.0
    calls: int = 0
    memory: int = 0
    keys: int = 0
    figures: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        """Take the server's readings now."""
        self.client.config_resetstat()
        self.cpu = _cpu(self.client.info("cpu"))
        self.calls = _calls(self.client)
        self.memory = int(self.client.info("memory")["used_memory"])
        self.keys = int(self.client.dbsize())

    def stop(self, operations: int, *, client_cpu: float | None = None) -> dict[str, float]:
        """Per operation since ``start``: server CPU (us), commands, memory (B), keys."""
        n = max(operations, 1)
        self.figures = {
            "server_cpu_us": (_cpu(self.client.info("cpu")) - self.cpu) / n * 1e6,
            "commands": (_calls(self.client) - self.calls) / n,
            "memory_b": (int(self.client.info("memory")["used_memory"]) - self.memory) / n,
            "keys": (int(self.client.dbsize()) - self.keys) / n,
        }
        if client_cpu is not None:
            self.figures["client_cpu_us"] = client_cpu / n * 1e6
        return self.figures
