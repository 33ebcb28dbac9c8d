"""``streamcqrs run --metrics-port``: Prometheus metrics of a 2-process bot, scraped for real.

The bots run as ``streamcqrs run tests.observeapps:app --processes 2`` against the real
server; the test scrapes the supervisor's ``/metrics`` over HTTP and reads it with
prometheus-client's own parser.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from streamcqrs.streams.commit import Commit
from streamcqrs.streams.envelope import encode
from streamcqrs.streams.keys import Kind, SubsystemKeys
from tests.botapps import BotProcess, wait_until
from tests.observeapps import GATE, SUBSYSTEM, Hopeless, Work
from tests.support import Backend

APP = "tests.observeapps:app"
CONCURRENCY = 4
PROCESSES = 2
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def put(client: redis.Redis, messages: Iterable[Work | Hopeless]) -> int:
    """Put the messages into observed's client operations in one commit; how many."""
    commit = Commit()
    count = 0
    for each in messages:
        commit.put(SubsystemKeys(SUBSYSTEM), Kind.CLIENT_OPERATIONS,
                   encode(each, object_id=str(each.n)))  # fmt: skip
        count += 1
    commit.run_sync(client)
    return count


def metrics_url(bot: BotProcess) -> str:
    """The /metrics URL the supervisor logged (it was asked for a free port)."""
    found: list[str] = []

    def logged() -> bool:
        for line in bot.text().splitlines():
            if '"serving metrics"' in line:
                found.append(json.loads(line)["url"])
                return True
        return False

    wait_until(logged, "the supervisor to serve metrics", 30, bot)
    return found[0]


def scrape(url: str) -> Samples:
    """Every sample of one scrape, by (name, sorted labels)."""
    reply = httpx.get(url, timeout=10)
    assert 200 == reply.status_code, reply.text
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every sample whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


GROUP = {"subsystem": SUBSYSTEM, "stream": "client-ops", "partition": "0", "group": "work"}


def test_metrics_of_two_processes_match_what_was_put(real: Backend, tmp_path: Path) -> None:
    """While the handlers hold their entries, lag and pending are what was put less what the
    two workers took (concurrency each); once they may finish, the handled, retried and
    failed counts and the latency histograms' counts add up to exactly what was put, summed
    over both processes, and lag and pending are back to 0."""
    client = real.sync_client()
    works = [Work(n=n, fail_first=n % 10 == 0) for n in range(200)]
    hopeless = [Hopeless(n=1000 + n) for n in range(3)]
    put_count = put(client, [*works, *hopeless])
    retried = sum(1 for w in works if w.fail_first)
    args = ("--processes", str(PROCESSES), "--concurrency", str(CONCURRENCY), "--metrics-port",
            "0", "--metrics-host", "127.0.0.1", "--retry-base", "0.05", "--log-format", "json")
    assert real.url is not None
    with BotProcess(real.url, tmp_path / "bots.log", *args, app=APP) as bot:
        url = metrics_url(bot)
        held = PROCESSES * CONCURRENCY
        seen: list[Samples] = []

        def holding() -> bool:
            seen.append(scrape(url))
            return held == total(seen[-1], "streamcqrs_group_pending", **GROUP)

        wait_until(holding, f"{held} entries pending (both workers full)", 30, bot)
        during = seen[-1]
        assert put_count == total(during, "streamcqrs_stream_length", stream="client-ops")
        assert put_count - held == total(during, "streamcqrs_group_lag", **GROUP)
        assert 0 < total(during, "streamcqrs_group_oldest_pending_seconds", **GROUP)
        assert 0 == total(during, "streamcqrs_handled_total")
        assert 1 == total(during, "streamcqrs_server_up")

        client.set(GATE, 1)

        def finished() -> bool:
            seen.append(scrape(url))
            done = seen[-1]
            return (
                len(works) == total(done, "streamcqrs_handled_total")
                and len(hopeless) == total(done, "streamcqrs_failed_total")
                and 0 == total(done, "streamcqrs_group_pending", **GROUP)
                and 0 == total(done, "streamcqrs_group_lag", **GROUP)
            )

        wait_until(finished, "every operation handled", 60, bot)
        after = seen[-1]
        status, _ = bot.terminate(30)
    assert 0 == status, bot.text()[-3000:]
    runs = len(works) + retried + len(hopeless)
    labels = {"subsystem": SUBSYSTEM, "stream": "client-ops", "group": "work"}
    assert retried == total(after, "streamcqrs_retried_total", **labels)
    assert len(works) == total(after, "streamcqrs_handled_total",
                               handler="tests.observeapps.work")  # fmt: skip
    assert runs == total(after, "streamcqrs_handler_seconds_count", **labels)
    assert runs == total(after, "streamcqrs_commit_seconds_count", **labels)
    assert runs == total(after, "streamcqrs_handler_seconds_bucket", le="+Inf", **labels)
    assert 0 < total(after, "streamcqrs_handler_seconds_sum", **labels)
    # Each retry came back as a new entry of the stream (a copy for this concern).
    assert put_count + retried == total(after, "streamcqrs_stream_length", stream="client-ops")
    assert len(hopeless) == total(after, "streamcqrs_dead_letters_open", subsystem=SUBSYSTEM)
    assert 0 == total(after, "streamcqrs_group_oldest_pending_seconds", **GROUP)


def test_health_endpoint_and_command_say_ready_once_groups_exist(
    real: Backend, tmp_path: Path
) -> None:
    """``streamcqrs health`` says not ready (exit 1) before any bot created its groups, and
    ready (exit 0) once they run; the supervisor's /health/ready says the same over HTTP."""
    from tests.commands import streamcqrs

    assert real.url is not None
    before = streamcqrs("health", APP, url=real.url)
    assert 1 == before.returncode, before.stderr
    assert "no consumer group 'work'" in before.stdout
    args = ("--metrics-port", "0", "--metrics-host", "127.0.0.1", "--log-format", "json")
    with BotProcess(real.url, tmp_path / "bots.log", *args, app=APP) as bot:
        base = metrics_url(bot).removesuffix("/metrics")
        assert 200 == httpx.get(f"{base}/health/live", timeout=10).status_code

        def ready() -> bool:
            return 200 == httpx.get(f"{base}/health/ready", timeout=10).status_code

        wait_until(ready, "/health/ready to answer 200", 30, bot)
        after = streamcqrs("health", APP, url=real.url)
        assert (0, "ready\n") == (after.returncode, after.stdout)
        assert 404 == httpx.get(f"{base}/nothing", timeout=10).status_code


def test_an_unreachable_server_reads_as_down_not_as_an_error(tmp_path: Path) -> None:
    """A scrape while the server is gone still answers 200: streamcqrs_server_up is 0."""
    from streamcqrs.bots.endpoint import Endpoint, metrics_dir
    from tests.observeapps import app

    endpoint = Endpoint(app, "redis://127.0.0.1:1/0", metrics_dir(), host="127.0.0.1", port=0)
    endpoint.start()
    try:
        samples = scrape(f"http://127.0.0.1:{endpoint.port}/metrics")
        ready = httpx.get(f"http://127.0.0.1:{endpoint.port}/health/ready", timeout=10)
    finally:
        endpoint.close()
    assert 0 == total(samples, "streamcqrs_server_up")
    assert 503 == ready.status_code
    assert re.search(r"does not answer", ready.text)


@pytest.mark.parametrize("variable", ["STREAMCQRS_CONCURRENCY", "STREAMCQRS_METRICS_PORT"])
def test_a_bad_setting_in_the_environment_is_one_line_naming_it(variable: str) -> None:
    """A value that does not fit stops ``run`` at once with one line naming the variable."""
    from streamcqrs.bots.settings import load
    from streamcqrs.domain.errors import ConfigurationError

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(variable, "-5")
        with pytest.raises(ConfigurationError, match=variable):
            load()


def test_flags_win_over_the_environment_and_the_environment_over_defaults() -> None:
    """STREAMCQRS_CONCURRENCY sets concurrency unless --concurrency is given; STREAMCQRS_ONLY
    takes names separated by commas or spaces."""
    from streamcqrs.bots.settings import load

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STREAMCQRS_CONCURRENCY", "7")
        patch.setenv("STREAMCQRS_ONLY", "email, slack")
        patch.setenv("STREAMCQRS_METRICS_PORT", "9100")
        from_env = load()
        from_flag = load({"concurrency": 3, "only": None})
    assert (7, ("email", "slack")) == (from_env.config().concurrency, from_env.only)
    assert (True, 9100) == (from_env.config().metrics, from_env.metrics_port)
    assert 3 == from_flag.config().concurrency
    assert math.isclose(30.0, from_flag.visibility_timeout)
