"""Prometheus metrics of an app's bots (the ``metrics`` extra: prometheus-client).

Two kinds of figures, gathered in two places so that ``--processes N`` reports each once:

* **What the workers did**: counters of deliveries handled, retried, failed for good,
  deferred (``NotYet``) and dead-lettered as bad input, and histograms of handler and commit
  latency, per stream, group and handler. Each worker counts its own (``Metrics``, fed by
  the bot's ``Observer``) in prometheus-client's multiprocess mode: files in a directory the
  supervisor makes, summed over every worker that ever ran (a restarted worker's counts stay).
* **Where the streams are**: per stream partition and group the length, lag, pending
  entries and the age of the oldest pending one, entries in the delayed set, open dead
  letters, and the outbox where there is one. These are read from the server once per
  scrape, by the supervisor (``StreamCollector``), never summed over processes.

``streamcqrs run APP --metrics-port 9100`` serves both at ``/metrics`` (see ``bots.endpoint``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import redis
from redis.exceptions import RedisError, ResponseError

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers.delivery import Delivery, Source, Verdict, sources
from streamcqrs.handlers.registry import App
from streamcqrs.handlers.runner import Attempt
from streamcqrs.streams.cli import open_count
from streamcqrs.streams.envelope import as_str
from streamcqrs.streams.keys import PartitionKeys
from streamcqrs.streams.statuses import Action

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # the 'metrics' extra is not installed; require() says how to get it
    Collector = object  # type: ignore[assignment,misc]

LABELS = ("subsystem", "stream", "group", "handler")
"""Labels of the workers' counters and histograms (``stream`` is the kind: ``client-ops``)."""
HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)  # fmt: skip
"""Seconds: most handlers here finish well under a millisecond; some call out for seconds."""
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds from handing a commit to the committer until its result (queue + one script)."""
_COUNTED = {
    Action.COMPLETE: "handled",
    Action.RETRY: "retried",
    Action.FAIL: "failed",
    Action.SELF_CANCEL: "deferred",
}


def require() -> None:
    """ConfigurationError saying how to install prometheus-client when it is missing."""
    try:
        import prometheus_client  # noqa: F401 - only asking whether it is there
    except ImportError:
        raise ConfigurationError(
            "--metrics-port needs prometheus-client: pip install 'streamcqrs[metrics]'"
        ) from None


class Metrics:
    """One worker's counters and histograms (see the module docstring).

    Under the supervisor (``PROMETHEUS_MULTIPROC_DIR`` set before this process imported
    prometheus-client) they are written to that directory; in a process of its own pass a
    ``registry`` to read them from.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        def counter(name: str, text: str) -> Counter:
            return Counter(name, text, LABELS, registry=registry)

        self.counters = {
            "handled": counter("streamcqrs_handled", "Deliveries whose handler completed."),
            "retried": counter(
                "streamcqrs_retried", "Handler runs that failed and were parked for a retry."
            ),
            "failed": counter(
                "streamcqrs_failed", "Records Failed for good (every attempt failed, or Fail)."
            ),
            "deferred": counter(
                "streamcqrs_deferred", "Handler runs that said NotYet (looked at again later)."
            ),
            "bad_input": counter(
                "streamcqrs_bad_input",
                "Entries dead-lettered without a handler run: undecodable, unknown type, "
                "invalid payload, or no handler.",
            ),
        }
        self.handler_seconds = Histogram(
            "streamcqrs_handler_seconds", "How long a handler ran, per run.", LABELS,
            buckets=HANDLER_BUCKETS, registry=registry,
        )  # fmt: skip
        self.commit_seconds = Histogram(
            "streamcqrs_commit_seconds",
            "From handing a delivery's commit to the committer until its result.",
            LABELS, buckets=COMMIT_BUCKETS, registry=registry,
        )  # fmt: skip
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}

    def _labelled(self, delivery: Delivery, counted: str) -> tuple[Any, Any, Any]:
        """(counter, handler histogram, commit histogram) of one label set, made once."""
        spec = delivery.spec
        handler = spec.name if spec is not None else ""
        key = (delivery.source.name, handler, counted)
        found = self._children.get(key)
        if found is None:
            ref = delivery.source.ref
            labels = (ref.subsystem, ref.kind.value, delivery.source.concern, handler)
            found = (
                self.counters[counted].labels(*labels),
                self.handler_seconds.labels(*labels),
                self.commit_seconds.labels(*labels),
            )
            self._children[key] = found
        return found

    def settled(self, delivery: Delivery, attempt: Attempt) -> None:
        """Count one committed delivery and observe its handler's and its commit's time."""
        if attempt.outcome is not None:
            counted = _COUNTED.get(attempt.outcome)
        else:
            counted = "bad_input" if delivery.verdict is Verdict.DEAD else None
        if counted is None:
            return  # a skip, or a settled copy acked: no work done
        counter, handler_seconds, commit_seconds = self._labelled(delivery, counted)
        counter.inc()
        if attempt.context is not None:  # the handler ran
            handler_seconds.observe(attempt.seconds)
        sent, answered = attempt.commit_ns
        if sent:
            commit_seconds.observe((answered - sent) / 1e9)


class StreamCollector(Collector):
    """The stream and group figures of an app, read from the server at each scrape."""

    def __init__(self, app: App, client: redis.Redis) -> None:
        self.app = app
        self.client = client
        self.sources = sources(app)

    def describe(self) -> list[Any]:
        """Nothing up front: describing would cost a scrape of the server at registration."""
        return []

    def collect(self) -> Iterator[Any]:
        """Gauges of every stream partition and group of the app, from one look each."""
        up = GaugeMetricFamily(
            "streamcqrs_server_up", "1 if the server answered this scrape's reads, else 0."
        )
        try:
            families = self._figures()
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _figures(self) -> list[Any]:
        stream = ["subsystem", "stream", "partition"]
        group = [*stream, "group"]
        length = GaugeMetricFamily("streamcqrs_stream_length", "Entries in the stream.",
                                   labels=stream)  # fmt: skip
        delayed = GaugeMetricFamily(
            "streamcqrs_delayed", "Entries parked in the stream's delayed set (retries, "
            "delayed operations).", labels=stream,
        )  # fmt: skip
        lag = GaugeMetricFamily(
            "streamcqrs_group_lag", "Entries not yet delivered to the group.", labels=group
        )
        pending = GaugeMetricFamily(
            "streamcqrs_group_pending", "Entries delivered to the group and not yet acked.",
            labels=group,
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            "streamcqrs_group_oldest_pending_seconds",
            "Age of the group's oldest pending entry (0 when none is pending).",
            labels=group,
        )
        dead = GaugeMetricFamily(
            "streamcqrs_dead_letters_open", "Dead letters neither retried nor archived.",
            labels=["subsystem", "partition"],
        )  # fmt: skip
        outbox = GaugeMetricFamily(
            "streamcqrs_outbox_lag", "Entries waiting in the partition's outbox (cluster: "
            "outputs for other slots, until the relay forwards them).",
            labels=["subsystem", "partition"],
        )  # fmt: skip
        by_key: dict[str, list[Source]] = {}
        for source in self.sources:
            by_key.setdefault(source.key, []).append(source)
        parts: dict[str, PartitionKeys] = {}
        now = time.time()
        for key, group_sources in by_key.items():
            first = group_sources[0]
            labels = [first.ref.subsystem, first.ref.kind.value, str(first.part.partition)]
            parts[first.part.tag] = first.part
            length.add_metric(labels, int(self.client.xlen(key)))
            delayed.add_metric(labels, int(self.client.zcard(first.part.delayed(first.ref.kind))))
            for name, behind, held, age in self._groups(key, group_sources, now):
                lag.add_metric([*labels, name], behind)
                pending.add_metric([*labels, name], held)
                oldest.add_metric([*labels, name], age)
        for part in parts.values():
            labels = [part.subsystem, str(part.partition)]
            dead.add_metric(labels, open_count(self.client, part))
            if self.client.exists(part.outbox):
                outbox.add_metric(labels, int(self.client.xlen(part.outbox)))
        return [length, delayed, lag, pending, oldest, dead, outbox]

    def _groups(
        self, key: str, group_sources: list[Source], now: float
    ) -> list[tuple[str, float, int, float]]:
        """(group, lag, pending, oldest pending age) of each group of ``key`` the app reads
        with: its concern's group, or each bot process's own group of a broadcast concern. A
        group not made yet reads as all lag (nothing delivered to it)."""
        try:
            infos = {as_str(i["name"]): i for i in self.client.xinfo_groups(key)}
        except ResponseError:  # no such stream yet
            infos = {}
        out: list[tuple[str, float, int, float]] = []
        for source in group_sources:
            if source.broadcast:
                names = sorted(n for n in infos if n.startswith(f"{source.concern}."))
            else:
                names = [source.group]
            for name in names:
                info = infos.get(name)
                if info is None:
                    out.append((name, float(self.client.xlen(key)), 0, 0.0))
                    continue
                raw_lag = info.get("lag")
                # A lag the server cannot tell (entries deleted past the group) reads as NaN.
                behind = float("nan") if raw_lag is None else float(raw_lag)
                held = int(info["pending"])
                out.append((name, behind, held, self._oldest(key, name, now) if held else 0.0))
        return out

    def _oldest(self, key: str, group: str, now: float) -> float:
        """Seconds since the group's oldest pending entry was written."""
        first = self.client.xpending_range(key, group, "-", "+", 1)
        if not first:
            return 0.0
        entry_id = first[0]["message_id"]
        text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        return max(0.0, now - int(text.partition("-")[0]) / 1000)


__all__ = ["LABELS", "Metrics", "StreamCollector", "require"]
