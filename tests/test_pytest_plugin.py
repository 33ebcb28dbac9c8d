"""The README's first app and its handler test, run by plain pytest in a folder of their own.

The files are the README's code blocks that start ``# shop.py``, ``# test_shop.py`` and
``# place.py``, so the README cannot drift from what runs. A second, failing ``async def``
test proves the plugin really runs coroutine tests (pytest alone would skip both with a
warning).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import flush

ROOT = Path(__file__).resolve().parents[1]


def readme_file(name: str) -> str:
    """The README's python code block whose first line is ``# <name>``."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL):
        if block.startswith(f"# {name}\n"):
            return str(block)
    raise AssertionError(f"README.md has no python block starting '# {name}'")


def test_the_readme_handler_test_runs_in_plain_pytest(tmp_path: Path) -> None:
    """``pytest`` in a user's folder runs the README's async handler test: it passes, and
    an async test that asserts something false fails (it ran)."""
    (tmp_path / "shop.py").write_text(readme_file("shop.py"))
    test = readme_file("test_shop.py")
    test += '''

async def test_that_runs_and_fails() -> None:
    test = HandlerTest(app)
    emitted = await test.send(PlaceOrder(sku="B-2"), object_id="8")
    assert emitted.events == [], "this async test ran"
'''
    (tmp_path / "test_shop.py").write_text(test)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    assert "this async test ran" in done.stdout


def test_the_readme_first_app_runs_with_its_producer(tmp_path: Path, real_url: str) -> None:
    """The README's ``shop.py`` run by ``streamcqrs run shop:app`` from its folder, and its
    ``place.py`` producer: the operation is Completed and its view is there, as the README
    says ``python place.py`` prints."""
    flush(real_url)
    (tmp_path / "shop.py").write_text(readme_file("shop.py"))
    (tmp_path / "place.py").write_text(readme_file("place.py"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"REDIS_URL": real_url}
    bots = subprocess.Popen(
        [sys.executable, "-m", "streamcqrs", "run", "shop:app"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        placed = subprocess.run([sys.executable, "place.py"], check=False, cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        bots.send_signal(signal.SIGTERM)
        try:
            _, errors = bots.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            bots.kill()
            _, errors = bots.communicate(timeout=10)
            errors += "\n(the bots did not stop within 30 s of SIGTERM)"
    expected = re.search(r"python place.py +# (.*)\n", (ROOT / "README.md").read_text())
    assert expected is not None, "the README says what python place.py prints"
    assert placed.stdout.strip() == expected.group(1), placed.stdout + placed.stderr + errors
    assert bots.returncode == 0, errors
