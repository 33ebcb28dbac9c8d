"""``streamcqrs server``, and what ``run`` says about the server it uses.

Each test starts real processes (the command, the embedded Valkey) on loopback or a unix
socket, and stops every one of them by its pid in a ``finally``.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from streamcqrs.streams import Settings
from tests.commands import ROOT, TIMEOUT, clean_env, one_error_line, streamcqrs

APP = "tests.cliapps:app"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def started(*args: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m streamcqrs ARGS`` in the background, output to ``log``; killed at the end
    if it is still running."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamcqrs", *args], cwd=ROOT, env=clean_env(),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(TIMEOUT)


def wait_for(log: Path, pattern: str, proc: subprocess.Popen[bytes], count: int = 1) -> str:
    """Wait (at most TIMEOUT s) until ``log`` holds ``count`` matches of ``pattern``; the log."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        text = log.read_text(errors="replace")
        if len(re.findall(pattern, text)) >= count:
            return text
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {count} x {pattern!r} (exit {proc.poll()}); log:\n{text}")
        time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> int:
    """Send ``sig`` and wait for the exit status."""
    proc.send_signal(sig)
    return proc.wait(TIMEOUT)


def test_the_server_prints_its_url_listens_on_loopback_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """server --port N prints 'export REDIS_URL=redis://127.0.0.1:N/0'; valkey:// reaches
    it too; it is bound to 127.0.0.1 only; SIGTERM stops it, exit 0, temp files removed."""
    port = free_port()
    log = tmp_path / "server.log"
    with started("server", "--port", str(port), log=log) as proc:
        text = wait_for(log, r"Ctrl-C stops it", proc)
        url = f"redis://127.0.0.1:{port}/0"
        assert f"export REDIS_URL={url}" in text.splitlines()
        with Settings(url=f"valkey://127.0.0.1:{port}/0").client() as client:
            assert client.ping()
            assert {"bind": "127.0.0.1"} == client.config_get("bind")
        found = re.search(r"files in (\S+) \(removed on exit\)", text)
        assert found is not None, text
        assert 0 == stop(proc)
    assert not Path(found[1]).exists()


def test_a_server_on_a_socket_with_a_data_dir_keeps_its_data(tmp_path: Path) -> None:
    """server --socket PATH --data-dir DIR --appendonly: Ctrl-C stops it (exit 0), DIR is
    kept, and a second server on the same DIR has the data."""
    sock, data = tmp_path / "dev.sock", tmp_path / "data"
    args = ("server", "--socket", str(sock), "--data-dir", str(data), "--appendonly")
    for round_ in (1, 2):
        log = tmp_path / f"server{round_}.log"
        with started(*args, log=log) as proc:
            assert f"export REDIS_URL=unix://{sock}" in wait_for(log, "Ctrl-C", proc)
            with redis.Redis.from_url(f"unix://{sock}") as client:
                if round_ == 1:
                    client.set("kept", "yes")
                else:
                    assert b"yes" == client.get("kept")
            assert 0 == stop(proc, signal.SIGINT)
        assert data.exists()


def test_a_port_where_a_server_already_answers_is_refused(tmp_path: Path) -> None:
    """A second server on the same port: one line saying to use the first or another port."""
    port = free_port()
    log = tmp_path / "server.log"
    with started("server", "--port", str(port), log=log) as proc:
        wait_for(log, "Ctrl-C", proc)
        line = one_error_line(streamcqrs("server", "--port", str(port)))
        assert f"a server already answers at redis://127.0.0.1:{port}/0" in line
        assert 0 == stop(proc)


def test_run_without_a_url_says_its_private_server_is_private(tmp_path: Path) -> None:
    """run with no --url or REDIS_URL starts a private server and logs its URL and that no
    other process can reach it, pointing at 'streamcqrs server'; SIGTERM exits 0."""
    log = tmp_path / "bots.log"
    with started("run", APP, "--log-format", "json", log=log) as proc:
        text = wait_for(log, '"worker started"', proc)
        assert "started a private one that only these workers can reach" in text
        assert re.search(r'"url": "unix://[^"]+redis\.sock"', text), text
        assert "streamcqrs server" in text
        assert 0 == stop(proc)


def test_run_warns_at_each_backoff_step_while_the_server_does_not_answer(
    tmp_path: Path,
) -> None:
    """A URL where nothing listens: the supervisor warns once, then each worker warns at
    every backoff step, naming the URL with its password hidden; SIGTERM still exits 0."""
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    log = tmp_path / "bots.log"
    with started("run", APP, "--url", url, "--log-format", "json", log=log) as proc:
        text = wait_for(log, "cannot reach the server; retrying", proc, count=3)
        assert "the server does not answer yet; the workers will keep trying" in text
        assert "secret" not in text
        assert "redis://user:***@127.0.0.1" in text
        assert 0 == stop(proc)
