"""Log lines of the supervisor and its workers share one stdout: each line is one write.

The supervisor and every worker inherit the same file (or pipe) as stdout. A line written in
two pieces (structlog's PrintLogger prints the message, then the newline) lets another
process's line land between them: two JSON lines glued into one, and an empty one. The
logger writes each line, newline included, in one write to the file.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator

import pytest
import structlog

from streamcqrs.bots.logging import configure, get_logger


class Raw(io.RawIOBase):
    """A file that keeps each write it gets as one piece (what the OS would get)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def writable(self) -> bool:
        """It is written to."""
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]  # buffer protocol in
        """Keep ``data`` as one piece."""
        self.pieces.append(bytes(data))
        return len(data)


@pytest.fixture
def reset() -> Iterator[None]:
    """Put structlog back as it was after the test configured it."""
    try:
        yield
    finally:
        structlog.reset_defaults()


@pytest.mark.parametrize("size", [10, 5_000, 20_000])
def test_each_log_line_reaches_the_file_in_one_write(
    monkeypatch: pytest.MonkeyPatch, reset: None, size: int
) -> None:
    """A short line, one near the buffer size and one past it: each is one write, newline
    included, so lines of several processes sharing the file never interleave mid-line."""
    stdout = Raw()
    # Set here, not in a fixture: pytest's output capture puts its own stdout back between
    # the setup of fixtures and the test.
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(stdout), "utf-8"))
    configure("info", json=True)
    log = get_logger(role="supervisor")

    log.info("x" * size, n=1)
    log.info("y" * size, n=2)

    assert 2 == len(stdout.pieces)
    assert [1, 2] == [json.loads(piece)["n"] for piece in stdout.pieces]
    assert all(piece.endswith(b"}\n") for piece in stdout.pieces)
