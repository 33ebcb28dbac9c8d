"""Traces across streams: the W3C ``traceparent`` in each envelope, and OpenTelemetry spans.

Every entry written inside a span carries that span's ``traceparent`` (the envelope's
``trace`` field); a bot's span for handling the entry takes it as its parent, and the entries
its handler writes carry the bot's span on. So a client's put, each handler run and each
commit downstream of it are one trace, across processes, with no collector of our own.

Spans are made only when the ``tracing`` extra (opentelemetry) is installed and the process
has set an SDK tracer provider (``trace.set_tracer_provider(TracerProvider(...))``, or
``opentelemetry-instrument``). Otherwise nothing here costs more than one function call: no
span is made, and a bot carries an input's ``traceparent`` on to its outputs unchanged, so
its trace id still reaches every log line and every entry downstream.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamcqrs.streams.envelope import Envelope

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the 'tracing' extra is not installed: no spans, traceparents pass on
    otel_trace = None  # type: ignore[assignment]

NAME = "streamcqrs"
"""The instrumentation scope spans are made under."""
QUIET_OUTCOMES = frozenset({"self-cancel"})
"""Outcomes (``Action`` values) an exception steers that do not mark a span failed: a
handler saying it is not ready yet (``NotYet``)."""
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_propagator: Any = TraceContextTextMapPropagator() if otel_trace is not None else None
RECHECK = 0.5
"""Seconds between two looks for a tracer provider while none is set (``refresh`` looks at
once): asking OpenTelemetry costs about a microsecond, too much for every message."""
_cached: tuple[float, Any] = (0.0, None)
"""(when to look again, the tracer found): a provider, once set, stays for the process."""


def tracer() -> Any:
    """The tracer to make spans with, or None when tracing is off (see the module docstring).

    A provider set after the first look is noticed within ``RECHECK`` seconds, or at once
    after ``refresh()`` (a bot calls it after its startup hooks).
    """
    again, found = _cached
    if found is not None or otel_trace is None:
        return found
    now = time.monotonic()
    return None if now < again else refresh(now)


def refresh(now: float | None = None) -> Any:
    """Look for a tracer provider now; the tracer to use, or None."""
    global _cached  # noqa: PLW0603 - one tracer per process, found once
    if otel_trace is None:
        return None
    provider = otel_trace.get_tracer_provider()
    unset = (otel_trace.ProxyTracerProvider, otel_trace.NoOpTracerProvider)
    found = None if isinstance(provider, unset) else provider.get_tracer(NAME)
    _cached = ((time.monotonic() if now is None else now) + RECHECK, found)
    return found


def trace_id(traceparent: str) -> str:
    """The 32-hex trace id of a ``traceparent`` ("" if it is not one)."""
    found = _TRACEPARENT.match(traceparent) if traceparent else None
    return found[1] if found else ""


def traceparent_of(span: Any) -> str:
    """The ``traceparent`` naming ``span`` as the parent of what is written inside it."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=otel_trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def parent_context(traceparent: str) -> Any:
    """The OpenTelemetry context whose parent is ``traceparent`` (the current one if empty)."""
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent})


class Span:
    """A live span, current while it lasts: what is written inside it names it as parent.

    ``Span.start`` returns None when tracing is off, so callers pay one call and a test.
    """

    __slots__ = ("_token", "span", "traceparent")

    def __init__(self, span: Any, token: Any) -> None:
        self.span = span
        self._token = token
        self.traceparent = traceparent_of(span)

    @classmethod
    def start(
        cls, name: str, *, parent: str = "", kind: str = "internal", attributes: Any = None
    ) -> Span | None:
        """Start a span named ``name`` under ``parent`` (a traceparent; empty: the current
        span, if any) and make it current; None when tracing is off."""
        found = tracer()
        if found is None:
            return None
        span = found.start_span(
            name,
            context=parent_context(parent),
            kind=getattr(otel_trace.SpanKind, kind.upper()),
            attributes=attributes,
        )
        token = otel_context.attach(otel_trace.set_span_in_context(span))
        return cls(span, token)

    @property
    def trace_id(self) -> str:
        """This span's trace id, 32 hex characters."""
        return f"{self.span.get_span_context().trace_id:032x}"

    def set(self, name: str, value: Any) -> None:
        """Set one attribute."""
        self.span.set_attribute(name, value)

    def named(self, envelope: Envelope) -> None:
        """Name the message the span is about: its id, type and object id."""
        self.span.set_attributes({
            "messaging.message.id": envelope.message_id,
            "messaging.message.conversation_id": envelope.correlation_id or envelope.message_id,
            "streamcqrs.type": envelope.type,
            "streamcqrs.object_id": envelope.object_id,
        })

    def fail(self, error: BaseException, *, status: bool = True) -> None:
        """Record ``error`` on the span; with ``status``, mark the span as failed."""
        self.span.record_exception(error)
        if status:
            self.span.set_status(otel_trace.StatusCode.ERROR, f"{type(error).__name__}: {error}")

    def outcome(self, outcome: str, error: BaseException | None) -> None:
        """End the span with how it went: ``outcome`` as an attribute, ``error`` recorded (and
        the span failed, unless the outcome is a planned wait such as a self-cancellation)."""
        if outcome:
            self.span.set_attribute("streamcqrs.outcome", outcome)
        if error is not None:
            self.fail(error, status=outcome not in QUIET_OUTCOMES)
        self.end()

    def end(self) -> None:
        """End the span and make the one before it current again."""
        otel_context.detach(self._token)
        self.span.end()


def record_span(
    name: str,
    *,
    parent: str,
    start_ns: int,
    end_ns: int,
    kind: str = "internal",
    attributes: Any = None,
    error: str = "",
) -> None:
    """Record a span that already happened (a commit, timed by the bot) under ``parent``."""
    found = tracer()
    if found is None:
        return
    span = found.start_span(
        name,
        context=parent_context(parent),
        kind=getattr(otel_trace.SpanKind, kind.upper()),
        attributes=attributes,
        start_time=start_ns,
    )
    if error:
        span.set_status(otel_trace.StatusCode.ERROR, error)
    span.end(end_time=end_ns)


class PutScope:
    """``with put_span(stream) as span``: the put's span (None when tracing is off), failed
    if the put raises, ended either way."""

    __slots__ = ("span",)

    def __init__(self, span: Span | None) -> None:
        self.span = span

    def __enter__(self) -> Span | None:
        return self.span

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if self.span is not None:
            if error is not None:
                self.span.fail(error)
            self.span.end()


def put_span(stream: str) -> PutScope:
    """A producer's span for one put into ``stream``, as a ``with`` block (see PutScope)."""
    return PutScope(
        Span.start(
            f"put {stream}",
            kind="producer",
            attributes={
                "messaging.system": "redis",
                "messaging.operation.type": "send",
                "messaging.destination.name": stream,
            },
        )
    )


__all__ = [
    "NAME",
    "PutScope",
    "Span",
    "parent_context",
    "put_span",
    "record_span",
    "refresh",
    "trace_id",
    "tracer",
]
