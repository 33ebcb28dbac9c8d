"""``python -m examples.notification demo`` runs the whole system and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_every_case_and_exits_0() -> None:
    """The demo starts its server, SMTP and Slack stand-ins, bots and API; every notification
    ends as it should (sent, suppressed, failed for a bounce, failed for a timeout, one id
    for a retried request); it prints the views and the audit trail, stops, and exits 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.notification", "demo", "--timeout", "40"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            # The bots run in sessions of their own: kill the whole tree, not just the demo.
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.communicate()
    assert 0 == proc.returncode, out
    assert "all notifications ended as expected" in out
    assert "same Idempotency-Key twice -> ids 7 and 7" in out
    assert 7 == out.count(") ok\n"), out
    assert "NotificationFailed" in out and "FailureReportedToInternalTeam" in out
    assert "to oncall@example.com: [notification 6] failed: timeout" in out
