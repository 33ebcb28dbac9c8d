"""What the deferred-work tests share: bots run in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from streamcqrs.bots.bot import Bot
from streamcqrs.bots.config import BotConfig
from streamcqrs.handlers.registry import App


@contextlib.asynccontextmanager
async def running(app: App, url: str, **config: Any) -> AsyncIterator[Bot]:
    """A Bot of ``app`` running in this event loop until the block ends (then drained)."""
    settings = {"block_ms": 50, "mover_interval": 0.05, "visibility_timeout": 2.0, **config}
    bot = Bot(app, BotConfig(url=url, **settings))
    task = asyncio.create_task(bot.run())
    try:
        yield bot
    finally:
        bot.stop()
        await asyncio.wait_for(task, 30)
        await bot.client.aclose()


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float) -> None:
    """Await ``check`` every 20 ms until it holds; fail naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within} s for {what}")
        await asyncio.sleep(0.02)
