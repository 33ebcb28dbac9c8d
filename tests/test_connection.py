"""Settings: where the server is and who we are on it, from arguments or the environment."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.exceptions

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.streams import ServerUnavailable, Settings
from streamcqrs.streams.server import normalize_url, redact
from tests.support import Backend, Run

USER, PASSWORD = "settings-test", "s3cret-for-tests"


@pytest.fixture
def acl_user(real: Backend) -> Iterator[str]:
    """A Redis ACL user on the real server, removed afterwards (FLUSHALL keeps users)."""
    admin = real.sync_client()
    admin.acl_setuser(USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"],
                      commands=["+@all"])  # fmt: skip
    try:
        yield real.url or ""
    finally:
        admin.acl_deluser(USER)


def test_credentials_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """REDIS_USERNAME and REDIS_PASSWORD fill username and password when none are given."""
    monkeypatch.setenv("REDIS_USERNAME", "bot")
    monkeypatch.setenv("REDIS_PASSWORD", "pw")

    settings = Settings(url="redis://localhost:1/0")

    assert ("bot", "pw") == (settings.username, settings.password)


def test_explicit_credentials_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arguments win over REDIS_USERNAME/REDIS_PASSWORD."""
    monkeypatch.setenv("REDIS_USERNAME", "bot")
    monkeypatch.setenv("REDIS_PASSWORD", "pw")

    settings = Settings(url="redis://localhost:1/0", username="api", password="other")

    assert ("api", "other") == (settings.username, settings.password)


def test_no_credentials_when_none_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the variables, the default user is used (no username, no password)."""
    monkeypatch.delenv("REDIS_USERNAME", raising=False)
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)

    assert (None, None) == (Settings().username, Settings().password)


def test_clients_log_in_as_the_user_from_the_environment(
    acl_user: str, monkeypatch: pytest.MonkeyPatch, run: Run[object]
) -> None:
    """Sync and async clients made from env settings are that ACL user on the server."""
    monkeypatch.setenv("REDIS_URL", acl_user)
    monkeypatch.setenv("REDIS_USERNAME", USER)
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    settings = Settings()

    with settings.client() as client:
        sync_user = client.acl_whoami()

    async def whoami() -> object:
        async_client = settings.async_client()
        try:
            return await async_client.acl_whoami()
        finally:
            await async_client.aclose()

    async_user = run(whoami())

    assert (USER, USER) == (sync_user, async_user)


def test_a_wrong_password_is_refused(acl_user: str) -> None:
    """A wrong password fails on the first command instead of acting as the default user."""
    settings = Settings(url=acl_user, username=USER, password="wrong", retries=0)

    with settings.client() as client, pytest.raises(redis.exceptions.AuthenticationError):
        client.ping()


def test_an_explicit_url_beats_redis_url(real: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings(url=...) connects there even when REDIS_URL points elsewhere."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    settings = Settings(url=real.url, username=None, password=None)

    with settings.client() as client:
        assert client.ping()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("valkey://127.0.0.1:6391", "redis://127.0.0.1:6391"),
        ("valkeys://u:p@h:1/2", "rediss://u:p@h:1/2"),
        ("VALKEY://h:1/0", "redis://h:1/0"),
        ("unix:///tmp/s.sock?db=3", "unix:///tmp/s.sock?db=3"),
        ("redis://h:1/15", "redis://h:1/15"),
    ],
)
def test_valkey_urls_read_as_redis_urls(given: str, expected: str) -> None:
    """valkey:// and valkeys:// are the same protocol as redis:// and rediss://."""
    assert expected == normalize_url(given)


@pytest.mark.parametrize(
    "given", ["localhost:6391", "ftp://h/0", "redis://h:port/0", "redis://h:1/x", "redis//h"]
)
def test_a_url_that_names_no_server_is_refused_with_the_form(given: str) -> None:
    """No scheme, an unknown one, a port or database that is not a number: ConfigurationError
    showing how a URL is written."""
    with pytest.raises(ConfigurationError) as refused:
        normalize_url(given)

    assert "redis://localhost:6379/0" in str(refused.value)


def test_settings_take_valkey_urls_and_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client made from a valkey:// URL, given or in REDIS_URL, connects where it says."""
    monkeypatch.setenv("REDIS_URL", "valkey://example.invalid:7000/3")

    with Settings().client() as client:
        kwargs = client.get_connection_kwargs()

    assert ("example.invalid", 7000, 3) == (kwargs["host"], kwargs["port"], kwargs["db"])


def test_passwords_are_hidden_in_urls_shown() -> None:
    """redact hides the password in the user part and in a password= query parameter."""
    assert "redis://bot:***@h:1/0" == redact("redis://bot:s3cret@h:1/0")
    assert "rediss://:***@h:1/0?password=***&x=1" == redact("rediss://:a@h:1/0?password=b&x=1")
    assert "unix:///tmp/s.sock" == redact("unix:///tmp/s.sock")


@pytest.mark.single_server("a cluster has database 0 only")
def test_check_tells_a_missing_database_from_a_server_that_is_down(real: Backend) -> None:
    """check(): the database a server lacks is a ConfigurationError (no retry fixes it); a
    port where nothing listens is ServerUnavailable (it may come up)."""
    url = real.url or ""
    wrong = f"{url}?db=99" if url.startswith("unix:") else f"{url}/99"
    Settings(url=url).check()

    with pytest.raises(ConfigurationError, match="has no such database"):
        Settings(url=wrong).check()
    with pytest.raises(ServerUnavailable, match=r"cannot reach the server at redis://127\.0\.0\.1:1/0"):
        Settings(url="redis://127.0.0.1:1/0").check()
