"""``python -m examples.customers demo [N]``: a server, 3 bots, N customers numbered."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import redis.asyncio

from examples.customers.domain import CreateCustomer, Customer
from streamcqrs.streams import LocalServer, Subsystem


async def _create_and_wait(url: str, count: int) -> list[int | None]:
    client = redis.asyncio.Redis.from_url(url)
    customers = Subsystem("customers", client)
    writer = customers.writer("client-ops")
    await asyncio.gather(*(
        writer.put(CreateCustomer(name=f"customer {n}"), object_id=f"c-{n}") for n in range(count)
    ))  # fmt: skip
    store = customers.aggregates(Customer)
    deadline = time.monotonic() + 60
    while True:
        numbers = [(await store.load(f"c-{n}")).number for n in range(count)]
        if all(numbers) or time.monotonic() > deadline:
            await client.aclose()
            return numbers
        await asyncio.sleep(0.2)


def demo(count: int) -> int:
    """Run the demo; 0 if every customer got a distinct number 1..count."""
    with LocalServer() if not os.environ.get("REDIS_URL") else _Given() as server:
        url = server.url
        bots = [
            subprocess.Popen([sys.executable, "-m", "streamcqrs", "run", "examples.customers:app",
                              "--url", url, "--log-level", "warning"])
            for _ in range(3)
        ]
        try:
            numbers = asyncio.run(_create_and_wait(url, count))
        finally:
            for bot in bots:
                bot.terminate()
            for bot in bots:
                bot.wait(30)
    ok = sorted(n for n in numbers if n) == list(range(1, count + 1))
    print(f"{count} customers, 3 bots: numbers {min(filter(None, numbers), default=0)}.."
          f"{max(filter(None, numbers), default=0)}, distinct and gapless: {ok}")  # fmt: skip
    return 0 if ok else 1


class _Given:
    """The server REDIS_URL names, in the shape of LocalServer."""

    url = os.environ.get("REDIS_URL", "")

    def __enter__(self) -> _Given:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "demo":
        sys.exit("usage: python -m examples.customers demo [N]")
    sys.exit(demo(int(sys.argv[2]) if len(sys.argv) > 2 else 200))
