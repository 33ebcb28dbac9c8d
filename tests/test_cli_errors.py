"""A mistake no retry can fix stops a command at once: one ``error: ...`` line naming the
fix, exit status 2, no traceback, and for ``run`` no worker started or restarted."""

from __future__ import annotations

import subprocess

import pytest

from tests.commands import one_error_line, streamcqrs
from tests.support import Backend

APP = "tests.cliapps:app"


def refused_run(*args: str) -> str:
    """Run ``streamcqrs run ARGS``; assert it refused in one line before any worker."""
    result = streamcqrs("run", *args, "--log-format", "json")
    line = one_error_line(result)
    assert "worker started" not in result.stdout, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    return line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("localhost:6391", "must start with redis://, rediss://, valkey://, valkeys:// or unix://"),
        ("http://localhost:6391/0", "must start with redis://"),
        ("redis://localhost:port/0", "cannot be read: Port could not be cast"),
        ("redis://localhost:6391/zero", "names database 'zero'"),
    ],
)
def test_a_malformed_url_is_refused_before_any_worker(url: str, expected: str) -> None:
    """A URL without a scheme, with an unknown one, or with a port or database that is not a
    number: one line with the form to use."""
    line = refused_run(APP, "--url", url)

    assert expected in line


@pytest.mark.single_server("a cluster has database 0 only")
def test_a_database_the_server_lacks_is_refused_before_any_worker(real: Backend) -> None:
    """redis://.../99 on a server with 16 databases: one line, checked with the server."""
    url = f"{real.url}?db=99" if (real.url or "").startswith("unix:") else f"{real.url}/99"

    line = refused_run(APP, "--url", url)

    assert "has no such database (DB index is out of range)" in line


def test_a_password_in_a_refused_url_is_not_printed() -> None:
    """The error line names the URL with its password hidden."""
    line = refused_run(APP, "--url", "redis://user:hunter2@localhost:port/0")

    assert "hunter2" not in line
    assert "redis://user:***@localhost:port/0" in line


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tests.cliappz:app", "no module 'tests.cliappz'"),
        ("tests.cliapps:ap", "module 'tests.cliapps' has no attribute 'ap'; did you mean "
         "tests.cliapps:app?"),
        ("tests.cliapps:Ping", "tests.cliapps:Ping is a ModelMetaclass, not a streamcqrs App"),
        ("tests.cliapps", "must be written MODULE:APP, e.g. shop:app or myapp.bots:app; did "
         "you mean tests.cliapps:app?"),
    ],
)
def test_an_unknown_app_is_refused_by_every_command_that_takes_one(
    spec: str, expected: str
) -> None:
    """A missing module or attribute, or an attribute that is no App: one line, the same
    for run, status and acl (one loader), with 'did you mean' where a name is close."""
    assert expected in refused_run(spec, "--url", "redis://localhost:1/0")
    assert expected in one_error_line(streamcqrs("status", spec, "--url", "redis://x:1/0"))
    assert expected in one_error_line(streamcqrs("acl", spec))


def test_an_unknown_subsystem_in_only_lists_the_known_ones() -> None:
    """--only shpo: no handler reads it; the line names the subsystems the app has."""
    line = refused_run(APP, "--only", "shpo", "--url", "redis://localhost:1/0")

    assert "--only shpo: no handler of app 'cliapps' reads that subsystem; known: cliapp" in line


@pytest.mark.parametrize("option", ["--processes", "--concurrency", "--batch", "--max-attempts"])
def test_a_count_below_one_is_refused(option: str) -> None:
    """--processes 0 and the like: argparse's one line, with where to read more."""
    line = refused_run(APP, option, "0")

    assert f"argument {option}: must be at least 1, not 0" in line
    assert "(see 'streamcqrs run --help')" in line


def test_a_worker_that_fails_its_configuration_is_not_restarted(real: Backend) -> None:
    """The app loads in the supervisor but each worker raises ConfigurationError: the worker
    exits with the configuration status, the supervisor stops at once with status 2 and one
    error line, and starts no second worker."""
    result = streamcqrs(
        "run", "tests.cliapps_broken:app", "--url", real.url or "", "--processes", "2",
        "--log-format", "json",
    )  # fmt: skip

    line = one_error_line(result)
    assert "a worker stopped on a configuration error" in line
    assert 2 == result.stdout.count('"worker started"'), result.stdout
    assert "worker died" not in result.stdout
    assert "this worker's settings are wrong" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("tail", "cliapp/event"),
        ("show", "cliapp/views", "x", "--by", "record"),
        ("failed", "list", "cliapp/client-ops"),
        ("dead-letters", "list", "bad:name"),
    ],
)
def test_a_malformed_command_line_is_one_line(args: tuple[str, ...]) -> None:
    """An unknown stream kind, a bad choice, a missing option, a bad subsystem name."""
    one_error_line(streamcqrs(*args, "--url", "redis://localhost:1/0"))


def test_an_unknown_subsystem_is_named_not_printed_as_nothing(real: Backend) -> None:
    """tail of a subsystem the server holds no streams of says so (and which it holds),
    instead of printing nothing and succeeding."""
    admin = real.sync_client()
    admin.xadd("{cliapp.0}:client-ops", {"junk": "x"})
    url = real.url or ""

    for args in (("tail", "shpo/events"), ("show", "shpo/events", "x"),
                 ("dead-letters", "list", "shpo"), ("failed", "list", "shpo/client-ops",
                                                    "--concern", "c"),
                 ("replay", "shpo/events", "--since", "0", "--to", "cliapp/events")):  # fmt: skip
        line = one_error_line(streamcqrs(*args, url=url))
        assert "has no streams of subsystem 'shpo'; subsystems with data: cliapp" in line, args


def test_status_and_operator_commands_never_start_an_empty_server() -> None:
    """Without --url or REDIS_URL they refuse in one line that says how to name a server
    and how to start one."""
    for args in (("status", APP), ("tail", "cliapp/events"), ("dead-letters", "list", "c")):
        line = one_error_line(streamcqrs(*args))
        assert "no server given: pass --url" in line, args
        assert "'streamcqrs server' starts one" in line


def test_an_unreachable_server_is_one_line_for_an_operator_command() -> None:
    """Nothing listening at the URL: one line naming it."""
    line = one_error_line(streamcqrs("status", APP, "--url", "redis://127.0.0.1:1/0"))

    assert "cannot reach the server at redis://127.0.0.1:1/0" in line


def test_the_help_of_run_names_each_check() -> None:
    """run --help says which mistakes stop it with status 2."""
    result: subprocess.CompletedProcess[str] = streamcqrs("run", "--help")

    assert 0 == result.returncode
    assert "exits 2" in result.stdout
