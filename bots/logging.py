"""Structured logs for bot processes: JSON lines when piped, readable console on a terminal.

Every line a bot writes about an entry is bound with subsystem, stream, message id,
correlation id, the handler, the message type and the attempt, and the trace id when the
entry carries trace context (see ``entry_logger``), so one conversation can be followed
across bots with a grep on its correlation or trace id.

The supervisor and its workers share one stdout (the file or pipe they were started with), so
each line goes out in one write, newline included: written in two (the message, then the
newline, as structlog's PrintLogger does for a line longer than the 8 KiB buffer), another
process's line could land in between and glue two JSON lines into one.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Set up structlog for this process; ``json`` defaults to "stdout is not a terminal"."""
    as_json = not sys.stdout.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def get_logger(**bound: Any) -> Any:
    """The bot runtime's logger, with ``bound`` fields on every line."""
    return structlog.get_logger("streamcqrs.bots").bind(**bound)


def entry_logger(
    base: Any,
    *,
    subsystem: str,
    stream: str,
    message_id: str,
    correlation_id: str,
    handler: str = "",
    type: str = "",
    attempt: int = 0,
    trace_id: str = "",
) -> Any:
    """``base`` bound with the fields every line about one entry carries: where it is, its
    ids, the handler and message type, the attempt, and its trace id when it has one.

    Bound when the first line is written: most entries are handled without logging, and
    binding costs a few microseconds per entry.
    """
    fields = {
        "subsystem": subsystem,
        "stream": stream,
        "message_id": message_id,
        "correlation_id": correlation_id or message_id,
        "handler": handler,
        "type": type,
        "attempt": attempt,
    }
    if trace_id:
        fields["trace_id"] = trace_id
    return _LazyBound(base, fields)


class _LazyBound:
    """A logger bound with ``fields`` on first use."""

    __slots__ = ("_base", "_bound", "_fields")

    def __init__(self, base: Any, fields: dict[str, Any]) -> None:
        self._base = base
        self._fields = fields
        self._bound: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._bound is None:
            self._bound = self._base.bind(**self._fields)
        return getattr(self._bound, name)


__all__ = ["LEVELS", "configure", "entry_logger", "get_logger"]
