"""The supervisor's HTTP port: ``/metrics`` for Prometheus, ``/health/*`` for orchestrators.

``streamcqrs run APP --metrics-port 9100`` starts it in the supervisor, beside its workers:

==================  ==========================================================================
``/metrics``        every worker's counters and histograms, summed (prometheus-client's
                    multiprocess mode), and the stream and group gauges read from the server
                    for this scrape (``bots.metrics``); OpenMetrics when the scraper asks
``/health/live``    200 while the supervisor runs
``/health/ready``   200 when the server answers and every consumer group exists, else 503
                    with the reasons (``bots.health``)
==================  ==========================================================================
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis

from streamcqrs.bots.health import problems
from streamcqrs.bots.metrics import StreamCollector
from streamcqrs.handlers.registry import App
from streamcqrs.streams.connection import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus-client's multiprocess mode keeps each process's values."""
SCRAPE_TIMEOUT = 5.0
"""Seconds one read of the server may take during a scrape."""


def metrics_dir() -> Path:
    """A fresh, empty directory for this run's multiprocess values (removed by ``close``)."""
    return Path(tempfile.mkdtemp(prefix="streamcqrs-metrics-"))


class Endpoint:
    """The HTTP server (in a thread of the supervisor) and what it reads."""

    def __init__(self, app: App, url: str, directory: Path, *, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        self.app = app
        self.url = url
        self.directory = directory
        self.client: redis.Redis = Settings(
            url=url, socket_timeout=SCRAPE_TIMEOUT, retries=0
        ).client()
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(directory))  # type: ignore[no-untyped-call]
        self.registry.register(StreamCollector(app, self.client))
        self._lock = threading.Lock()  # one scrape reads the server at a time
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on (the one asked for, or the one given for 0)."""
        return int(self.server.server_address[1])

    def start(self) -> Endpoint:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, close the connection, remove the multiprocess directory."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
        self.client.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def worker_gone(self, pid: int) -> None:
        """Forget a dead worker's live gauges (its counters stay in the totals)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition of every metric, in the format ``accept`` asks for."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        with self._lock:
            return encoder(self.registry), content_type

    def readiness(self) -> list[str]:
        """Why the app's bots are not ready (empty: ready)."""
        with self._lock:
            return problems(self.client, self.app, self.url)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                if path == "/metrics":
                    body, kind = endpoint.render(self.headers.get("Accept", ""))
                    self._reply(200, body, kind)
                elif path == "/health/live":
                    self._reply(200, b"alive\n")
                elif path == "/health/ready":
                    found = endpoint.readiness()
                    text = "".join(f"{each}\n" for each in found) or "ready\n"
                    self._reply(503 if found else 200, text.encode())
                else:
                    self._reply(404, b"not found: try /metrics, /health/live, /health/ready\n")

            def _reply(self, status: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: a scrape every few seconds is not worth a log line."""

        return Handler


__all__ = ["MULTIPROC_ENV", "Endpoint", "metrics_dir"]
