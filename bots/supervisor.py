"""``python -m bots run``: N worker processes, each a Bot, under a supervisor that restarts them.

The supervisor resolves the server once (so workers share one private server when no URL is
given), starts the workers with multiprocessing's spawn method, restarts one that dies (with
a growing pause if it keeps dying at once), and on SIGTERM/SIGINT asks every worker to stop,
waits for them within their grace period, kills stragglers, and exits 0.

Each worker runs one Bot on its own event loop; SIGTERM/SIGINT make it stop reading, finish
or release in-flight work, commit, and exit 0.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
import threading
import time
from types import FrameType

from streamcqrs.bots.bot import Bot
from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.logging import configure, get_logger
from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers.registry import App
from streamcqrs.streams.server import resolve_url

CHECK_EVERY = 0.2
"""Seconds between two looks at the workers."""
QUICK_DEATH = 5.0
"""A worker that dies sooner than this after its start counts as crash-looping."""


def load_app(spec: str) -> App:
    """Import ``MODULE:ATTRIBUTE`` and return the App found there."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"app {spec!r} must be written MODULE:APP, e.g. myapp.bots:app")
    module = importlib.import_module(module_name)
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(app, App):
        raise ConfigurationError(f"{spec} is a {type(app).__name__}, not a handlers.App")
    return app


async def serve(app: App, config: BotConfig) -> None:
    """Run one Bot until SIGTERM or SIGINT, then drain it and close its connections."""
    bot = Bot(app, config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, bot.stop)
    try:
        await bot.run()
    finally:
        await bot.client.aclose()


def worker_main(app_spec: str, config: BotConfig, log_level: str, json: bool | None) -> None:
    """Entry point of one worker process."""
    configure(log_level, json=json)
    asyncio.run(serve(load_app(app_spec), config))
    stuck = [t for t in threading.enumerate() if t.is_alive() and t is not threading.main_thread()]
    if stuck:
        # A plain ``def`` handler still blocked after the grace period: its entry was
        # released and everything else committed, so exit now rather than when it returns
        # (Python would otherwise wait for the thread at exit).
        sys.stdout.flush()
        os._exit(0)


class Supervisor:
    """Starts ``processes`` workers and keeps them running until told to stop."""

    def __init__(
        self,
        app_spec: str,
        config: BotConfig,
        *,
        processes: int = 1,
        log_level: str = "info",
        json: bool | None = None,
    ) -> None:
        if processes < 1:
            raise ConfigurationError(f"processes must be >= 1, got {processes}")
        self.app_spec = app_spec
        self.config = config
        self.processes = processes
        self.log_level = log_level
        self.json = json
        self.log = get_logger(app=app_spec, role="supervisor")
        self.stopping = threading.Event()
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, tuple[multiprocessing.process.BaseProcess, float]] = {}
        self._pause: dict[int, float] = {}
        self.restarts = 0

    def _start(self, index: int, url: str) -> None:
        process = self._context.Process(
            target=worker_main,
            args=(self.app_spec, self.config.for_process(index, url), self.log_level, self.json),
            name=f"bots-worker-{index}",
        )
        process.start()
        self._workers[index] = (process, time.monotonic())
        self.log.info("worker started", index=index, pid=process.pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping.set()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit status (0 after a clean stop)."""
        load_app(self.app_spec)  # a wrong app spec fails here, once, not in every worker
        url = resolve_url(self.config.url)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for index in range(self.processes):
            self._start(index, url)
        while not self.stopping.wait(CHECK_EVERY):
            self._restart_dead(url)
        return self._stop_all()

    def _restart_dead(self, url: str) -> None:
        for index, (process, started) in list(self._workers.items()):
            if process.is_alive():
                continue
            process.join(0)
            lived = time.monotonic() - started
            pause = self._pause.get(index, 0.0)
            pause = min(max(0.5, pause * 2), 30.0) if lived < QUICK_DEATH else 0.0
            self._pause[index] = pause
            self.log.error("worker died; restarting it", index=index, pid=process.pid,
                           exitcode=process.exitcode, lived_s=round(lived, 1),
                           pause_s=pause)  # fmt: skip
            if pause and self.stopping.wait(pause):
                return
            self.restarts += 1
            self._start(index, url)

    def _stop_all(self) -> int:
        self.log.info("stopping workers", count=len(self._workers))
        for process, _ in self._workers.values():
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: the worker drains within its grace period
        deadline = time.monotonic() + self.config.grace + 5.0
        status = 0
        for index, (process, _) in self._workers.items():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                self.log.error("worker did not stop in time; killing it", index=index)
                process.kill()
                process.join(5)
                status = 1
            elif process.exitcode not in (0, -signal.SIGTERM):
                status = 1
        self.log.info("stopped", exit_status=status)
        return status


__all__ = ["Supervisor", "load_app", "serve", "worker_main"]
