"""``streamcqrs run``: N worker processes, each a Bot, under a supervisor that restarts them.

Before it forks anything, the supervisor loads the app, checks ``--only`` against it, and
resolves and checks the server once (the URL's form, then a PING that logs in and selects
the database): a mistake no restart can fix stops it here with a ConfigurationError, which
the command prints as one line and exit status 2. With no URL it starts a private server and
says so, since no other process can reach that one. A server that does not answer yet is
only a warning: the workers wait for it, saying so at each backoff step.

It then starts the workers with multiprocessing's spawn method and waits for one of three
events: a worker exits (its process sentinel), a signal arrives (a wakeup pipe the signal
handler writes to), or a restart falls due. It reacts at once, without polling. A worker
that dies is restarted, after a growing pause if it keeps dying at once; a worker that exits
with ``CONFIG_ERROR`` (its configuration is wrong, say the database is gone from the server)
is not restarted: the supervisor stops them all and exits 2. On SIGTERM/SIGINT it asks every
worker to stop, waits for them within their grace period, kills stragglers, and exits 0 if
every worker running at that moment stopped cleanly.

Each worker runs one Bot on its own event loop; SIGTERM/SIGINT make it stop reading, finish
or release in-flight work, commit, and exit 0.

With ``metrics_port`` the supervisor serves ``/metrics`` and ``/health/*`` from a thread
(``bots.endpoint``): its workers write their counts into a directory of prometheus-client's
multiprocess mode, made for this run and named to them in ``PROMETHEUS_MULTIPROC_DIR``
before they start, and the supervisor reads the streams' figures from the server per scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import replace
from types import FrameType

from streamcqrs.bots.bot import Bot
from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.endpoint import MULTIPROC_ENV, Endpoint, metrics_dir
from streamcqrs.bots.logging import configure, get_logger
from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers.registry import App
from streamcqrs.streams.connection import Settings
from streamcqrs.streams.errors import ServerUnavailable
from streamcqrs.streams.server import given_url, redact, resolve_url

QUICK_DEATH = 5.0
"""A worker that dies sooner than this after its start counts as crash-looping."""
CONFIG_ERROR = 78
"""A worker's exit status for a configuration error (sysexits' EX_CONFIG): not restarted."""
SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""What stops the supervisor (and, sent by it, each worker) cleanly."""

load_app = App.load
"""The one ``MODULE:APP`` loader (``App.load``), under the name the bots layer exports."""


def check_only(app: App, only: tuple[str, ...]) -> None:
    """ConfigurationError if ``--only`` names a subsystem no handler of ``app`` consumes."""
    known = app.input_subsystems()
    unknown = sorted(set(only) - known)
    if unknown:
        raise ConfigurationError(
            f"--only {' '.join(unknown)}: no handler of app {app.name!r} reads "
            f"{'that subsystem' if len(unknown) == 1 else 'those subsystems'}; "
            f"known: {', '.join(sorted(known)) or 'none'}"
        )


async def cluster_or_not(config: BotConfig) -> BotConfig:
    """``config`` saying whether the server is a cluster, asking it (and waiting for it to
    answer, with a warning at each backoff step) if it does not say yet."""
    if config.cluster is not None:
        return config
    log = get_logger(role="worker", index=config.index)
    settings = Settings(url=config.url)
    pause = 0.1
    while True:
        try:
            return replace(config, cluster=await asyncio.to_thread(settings.is_cluster))
        except ServerUnavailable as exc:
            log.warning("cannot reach the server; retrying", url=redact(config.url or ""),
                        error=str(exc), pause_s=pause)  # fmt: skip
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)


async def serve(app: App, config: BotConfig) -> None:
    """Run one Bot until SIGTERM or SIGINT, then drain it and close its connections."""
    bot = Bot(app, await cluster_or_not(config))
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, bot.stop)
    try:
        await bot.run()
    finally:
        await bot.client.aclose()


def worker_main(app_spec: str, config: BotConfig, log_level: str, json: bool | None) -> None:
    """Entry point of one worker process; exits with CONFIG_ERROR on a configuration error."""
    configure(log_level, json=json)
    try:
        asyncio.run(serve(App.load(app_spec), config))
    except ConfigurationError as exc:
        get_logger(app=app_spec, index=config.index).error(
            "configuration error; not restarting", error=str(exc)
        )
        sys.stdout.flush()
        raise SystemExit(CONFIG_ERROR) from None
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
        metrics_port: int | None = None,
        metrics_host: str = "0.0.0.0",
    ) -> None:
        if processes < 1:
            raise ConfigurationError(f"processes must be >= 1, got {processes}")
        self.app_spec = app_spec
        self.config = replace(config, metrics=True) if metrics_port is not None else config
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.endpoint: Endpoint | None = None
        """The /metrics and /health server, while it runs."""
        self.processes = processes
        self.log_level = log_level
        self.json = json
        self.log = get_logger(app=app_spec, role="supervisor")
        self._stop_requested = False
        self._wake_read = self._wake_write = -1
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, tuple[multiprocessing.process.BaseProcess, float]] = {}
        self._pause: dict[int, float] = {}
        self._due: dict[int, float] = {}
        """Workers that died, by index: when to start their replacement (monotonic)."""
        self.restarts = 0
        self.config_error = False
        """A worker exited with CONFIG_ERROR: stop everything, and say so."""

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
        # Only a flag and a byte: a handler that took a lock (threading.Event.set) could
        # deadlock on one the interrupted code holds.
        self._stop_requested = True
        with contextlib.suppress(OSError):  # the pipe is full: the loop wakes anyway
            os.write(self._wake_write, b"\0")

    def prepare(self) -> str:
        """Load and check everything once, before any worker: the URL the workers get.

        ConfigurationError for a wrong app, ``--only`` or URL (form, database, login).
        """
        app = App.load(self.app_spec)
        check_only(app, self.config.only)
        private = given_url(self.config.url) is None
        url = resolve_url(self.config.url)
        if private:
            self.log.warning(
                "no server given: started a private one that only these workers can reach",
                url=url,
                hint="run 'streamcqrs server' and pass its REDIS_URL (or --url) so that "
                "producers and 'streamcqrs status' reach the same server",
            )
        try:
            Settings(url=url).check()
            if self.config.cluster is None:
                cluster = Settings(url=url).is_cluster()
                self.config = replace(self.config, cluster=cluster)
                if cluster:
                    self.log.info(
                        "the server is a cluster: outputs for other slots go through "
                        "outboxes and the bots' relays", url=redact(url),
                    )  # fmt: skip
        except ServerUnavailable as exc:
            self.log.warning(
                "the server does not answer yet; the workers will keep trying",
                url=redact(url), error=str(exc),
            )  # fmt: skip
        if self.metrics_port is not None:
            self.endpoint = self._serve_metrics(app, url, self.metrics_port)
        return url

    def _serve_metrics(self, app: App, url: str, port: int) -> Endpoint:
        """Start /metrics and /health; name the workers' multiprocess directory to them."""
        from streamcqrs.bots.metrics import require

        require()
        directory = metrics_dir()
        try:
            endpoint = Endpoint(app, url, directory, host=self.metrics_host, port=port)
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise ConfigurationError(
                f"cannot serve metrics on {self.metrics_host}:{port}: {exc}; pick another "
                "--metrics-port (0 picks a free one)"
            ) from None
        os.environ[MULTIPROC_ENV] = str(directory)  # the workers, spawned after this, see it
        self.log.info("serving metrics", url=f"http://{self.metrics_host}:{endpoint.port}/metrics")
        return endpoint.start()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit status (0 after a clean stop)."""
        url = self.prepare()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        try:
            for index in range(self.processes):
                self._start(index, url)
            while not self._stop_requested:
                self._wait()
                self._reap(url)
            status = self._stop_all()
            if self.config_error:
                raise ConfigurationError(
                    "a worker stopped on a configuration error (its 'configuration error' log "
                    "line says which); fix it and start again"
                )
            return status
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_read)
            os.close(self._wake_write)
            if self.endpoint is not None:
                self.endpoint.close()
                os.environ.pop(MULTIPROC_ENV, None)

    def _wait(self) -> None:
        """Block until a worker exits, a signal arrives, or a restart falls due."""
        timeout = None
        if self._due:
            timeout = max(0.0, min(self._due.values()) - time.monotonic())
        sentinels = [process.sentinel for process, _ in self._workers.values()]
        ready = multiprocessing.connection.wait([self._wake_read, *sentinels], timeout)
        if self._wake_read in ready:
            os.read(self._wake_read, 512)

    def _reap(self, url: str) -> None:
        """Note workers that died (restart them in time, or stop on a configuration error)
        and start the replacements that are due. Once a stop is asked for, ``_stop_all``
        sees to every worker (one may have had the signal too and exited already)."""
        if self._stop_requested:
            return
        for index, (process, started) in list(self._workers.items()):
            if process.is_alive():
                continue
            process.join(0)
            del self._workers[index]
            if self.endpoint is not None and process.pid is not None:
                self.endpoint.worker_gone(process.pid)
            lived = time.monotonic() - started
            if process.exitcode == CONFIG_ERROR:
                self.log.error("worker stopped on a configuration error; stopping the others",
                               index=index, pid=process.pid, exitcode=process.exitcode)  # fmt: skip
                self.config_error = True
                self._stop_requested = True
                return
            pause = self._pause.get(index, 0.0)
            pause = min(max(0.5, pause * 2), 30.0) if lived < QUICK_DEATH else 0.0
            self._pause[index] = pause
            self._due[index] = time.monotonic() + pause
            self.log.error("worker died; restarting it", index=index, pid=process.pid,
                           exitcode=process.exitcode, lived_s=round(lived, 1),
                           pause_s=pause)  # fmt: skip
        now = time.monotonic()
        for index, due in sorted(self._due.items()):
            if due <= now and not self._stop_requested:
                del self._due[index]
                self.restarts += 1
                self._start(index, url)

    def _stop_all(self) -> int:
        """Stop the running workers; 0 if each stopped cleanly within the grace period.

        A worker that died earlier and waits for its restart is not counted: its death was
        reported when it happened, and the stop itself went as asked.
        """
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
        self.log.info("stopped", exit_status=2 if self.config_error else status)
        return status


__all__ = [
    "CONFIG_ERROR",
    "Supervisor",
    "check_only",
    "cluster_or_not",
    "load_app",
    "serve",
    "worker_main",
]
