"""Running the ``streamcqrs`` command as a user would: a subprocess, bounded in time.

The environment's ``REDIS_*`` variables are dropped, so a test names its server itself (or
checks what happens without one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60
"""Seconds any one command may take before the test fails."""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``REDIS_*``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    return env | extra


def streamcqrs(
    *args: str, url: str | None = None, cwd: Path = ROOT, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m streamcqrs ARGS`` to completion and capture its output; ``url`` is
    handed over as REDIS_URL."""
    env = clean_env(**({"REDIS_URL": url} if url is not None else {}))
    return subprocess.run(
        [sys.executable, "-m", "streamcqrs", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``error: ...`` line a refused command printed (asserting it is alone)."""
    lines = result.stderr.splitlines()
    assert 2 == result.returncode, (result.returncode, result.stdout, result.stderr)
    assert 1 == len(lines), result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]
