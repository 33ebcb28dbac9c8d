"""What the edge tests share: a real webhook receiver on loopback, servers in threads, waits.

The receiver is a real HTTP server (the standard library's, in a thread) that records every
request and answers each path as told (``/fail`` 500 until told otherwise, ``/gone`` 410).
The gateway runs under uvicorn in a thread, on a free loopback port. Bots run in the test's
own event loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import uvicorn
from standardwebhooks import Webhook


@dataclass(frozen=True)
class Request:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    def verify(self, secret: str) -> Any:
        """Verify the Standard Webhooks signature with ``secret``; the payload if it holds."""
        return Webhook(secret).verify(self.body, self.headers)


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: records requests, answers per path."""

    answers: dict[str, int] = field(default_factory=dict)
    """Status per path (default 200)."""
    first: dict[str, list[int]] = field(default_factory=dict)
    """Statuses per path for its first requests, in order, before ``answers`` applies."""
    requests: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def at(self, path: str) -> list[Request]:
        """The requests to ``path``, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver._lock:
                    receiver.requests.append(request)
                    queued = receiver.first.get(self.path)
                    status = queued.pop(0) if queued else receiver.answers.get(self.path, 200)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the tests read the recorded requests instead."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@contextmanager
def receiver() -> Iterator[Receiver]:
    """A started receiver, stopped afterwards."""
    made = Receiver().start()
    try:
        yield made
    finally:
        made.stop()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(asgi: Any) -> Iterator[str]:
    """Run an ASGI app under uvicorn in a thread on loopback; its base URL."""
    port = free_port()
    config = uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=2)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start within 15 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


async def eventually(
    check: Callable[[], Any], what: str, *, seconds: float = 15.0, step: float = 0.02
) -> Any:
    """Await until ``check()`` returns something truthy (bounded); return it."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if isinstance(found, Awaitable):
            found = await found
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(step)


__all__ = ["Receiver", "Request", "eventually", "free_port", "receiver", "serve"]
