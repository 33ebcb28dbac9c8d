"""Settings: where the server is and who we are on it, from arguments or the environment."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.exceptions

from streamcqrs.streams import Settings
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
