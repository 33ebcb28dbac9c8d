"""The dashboard in a real headless browser: Debian's chromium driven by Playwright.

The bots run as ``streamcqrs run tests.observeapps:app`` on the real server; the dashboard
runs under uvicorn on loopback; the browser clicks Retry on a dead letter once the fix is
"deployed", and then sees the record handled. Screenshots of the pages it saw are left in
``artifacts/`` at the top of the checkout (``$STREAMCQRS_ARTIFACTS`` names another folder).

Chromium is found at ``/usr/bin/chromium`` (``.ci/run`` installs Debian's package) or on the
PATH; without it the test is skipped here and fails in CI (CI=true).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from examples.notification.demo import api_server
from streamcqrs.bots.dashboard import create_dashboard
from streamcqrs.streams.cli import open_count
from streamcqrs.streams.keys import SubsystemKeys
from tests.botapps import ROOT, BotProcess, wait_until
from tests.observeapps import GATE, MENDED, SUBSYSTEM, Mended, Work, app
from tests.support import Backend
from tests.test_bots_metrics import put

APP = "tests.observeapps:app"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
"""Chromium flags that work on this project's machines (no GPU, no network beyond loopback)."""


def artifacts() -> Path:
    """Where screenshots go: $STREAMCQRS_ARTIFACTS, else artifacts/ in the checkout."""
    folder = Path(os.environ.get("STREAMCQRS_ARTIFACTS") or ROOT / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chromium() -> str:
    """The system chromium's path; skip (locally) or fail (CI) when there is none."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    missing = "" if found else "no chromium on this machine (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401 - only asking whether it is there
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[test]')"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {missing}")
        pytest.skip(missing)
    assert found is not None
    return found


@pytest.fixture
def browser() -> Iterator[Any]:
    """A new page of a headless chromium with a fresh profile, closed after the test."""
    path = chromium()
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="dashboard-chromium-")
    try:
        with sync_playwright() as driver:
            context = driver.chromium.launch_persistent_context(
                profile, executable_path=path, headless=True, args=FLAGS,
                viewport={"width": 1400, "height": 900},
            )  # fmt: skip
            try:
                yield context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_retrying_a_dead_letter_in_the_browser_gets_the_record_handled(
    real: Backend, tmp_path: Path, browser: Any
) -> None:
    """A record whose handler failed is dead-lettered; an operator deploys the fix, opens
    the dashboard, sees the dead letter with its reason, clicks Retry, and then sees the
    record Completed for its concern and the view its handler wrote; the overview shows
    the streams and groups with their figures."""
    client = real.sync_client()
    client.set(GATE, 1)
    put(client, [Work(n=n) for n in range(5)])
    put(client, [Mended(n=7)])
    part = SubsystemKeys(SUBSYSTEM).partition(0)
    assert real.url is not None
    page = browser
    shots = artifacts()
    with (
        BotProcess(real.url, tmp_path / "bots.log", "--max-attempts", "1", app=APP) as bot,
        api_server(real.url, asgi=create_dashboard(app, real.url)) as base,
    ):
        wait_until(lambda: 1 == open_count(client, part), "the dead letter", 30, bot)

        page.goto(f"{base}/dead-letters/{SUBSYSTEM}")
        row = page.locator("tr.letter").first
        assert "open" in row.inner_text()
        assert "the fix is not deployed yet" in row.inner_text()
        message_id = row.get_attribute("data-id")
        page.screenshot(path=str(shots / "dashboard-dead-letter.png"), full_page=True)

        client.set(MENDED, 1)  # the fix is deployed
        row.get_by_role("button", name="Retry").click()
        page.wait_for_load_state()
        assert f"retried {message_id}" in page.locator(".note").inner_text()
        assert "retried" in page.locator("tr.letter").first.inner_text()

        record = f"{base}/records/{SUBSYSTEM}/client-ops/{message_id}"
        status = completed(page, record, "mended")
        assert "Completed" == status, bot.text()[-3000:]
        history = page.locator("table").nth(1).inner_text()
        assert "reset-failed" in history  # the operator's retry, in the record's history
        page.screenshot(path=str(shots / "dashboard-record.png"), full_page=True)

        page.goto(f"{base}/views/{SUBSYSTEM}?id=mended-7")
        assert "handled after the fix" in page.locator("#view").inner_text()

        page.goto(f"{base}/")
        overview = page.locator("table").first.inner_text()
        assert "observed/client-ops" in overview and "mended" in overview and "work" in overview
        page.screenshot(path=str(shots / "dashboard-overview.png"), full_page=True)
    for name in ("dashboard-dead-letter.png", "dashboard-record.png", "dashboard-overview.png"):
        assert (shots / name).stat().st_size > 10_000


def completed(page: Any, url: str, concern: str) -> str:
    """Reload the record's page until ``concern`` is Completed (at most 30 s); its status."""
    deadline = time.monotonic() + 30
    while True:
        page.goto(url)
        heading = page.locator("h2.concern", has_text=f"{concern}:")
        status: str = heading.locator(".status").inner_text().strip()
        if status == "Completed" or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_a_post_from_another_site_is_refused(real: Backend) -> None:
    """A form on another site cannot make an operator's browser retry or archive: a POST
    whose Origin is not the dashboard's own is refused with 403, and nothing changes."""
    import httpx

    assert real.url is not None
    with api_server(real.url, asgi=create_dashboard(app, real.url)) as base:
        reply = httpx.post(f"{base}/dead-letters/{SUBSYSTEM}/x/retry",
                           headers={"Origin": "http://evil.example"})  # fmt: skip
        same = httpx.post(f"{base}/dead-letters/{SUBSYSTEM}/x/retry",
                          headers={"Origin": base}, follow_redirects=False)  # fmt: skip
    assert 403 == reply.status_code
    assert 303 == same.status_code  # its own origin goes through, and is told there is no x
    assert "no dead letter ['x']" in unquote(same.headers["location"])


def test_the_dashboard_command_refuses_a_server_that_does_not_answer() -> None:
    """``streamcqrs dashboard`` checks the server before it serves: one line, exit 2."""
    from tests.commands import one_error_line, streamcqrs

    result = streamcqrs("dashboard", APP, "--url", "redis://127.0.0.1:1/0", "--port", "0")
    assert "127.0.0.1:1" in one_error_line(result)
