"""A pytest plugin that runs ``async def`` tests, so ``HandlerTest`` works in plain pytest.

Installed with streamcqrs (a ``pytest11`` entry point), it runs a coroutine test function on
a fresh event loop (``asyncio.run``) when no other async plugin takes it: a test marked for
pytest-asyncio, anyio or trio, or one pytest-asyncio's auto mode already wrapped, is left to
that plugin. Without it pytest skips an ``async def`` test with a warning, so a newcomer's
first handler test would silently not run.

Async fixtures are another plugin's business (pytest-asyncio, anyio): this one only runs
test functions. ``-p no:streamcqrs`` turns it off.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

OTHER_PLUGINS_MARKS = ("asyncio", "anyio", "trio")
"""Marks that say another async plugin runs the test."""


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an unclaimed coroutine test function to completion; None leaves it to others."""
    function: Any = pyfuncitem.obj
    if not inspect.iscoroutinefunction(function):
        return None
    if any(pyfuncitem.get_closest_marker(mark) for mark in OTHER_PLUGINS_MARKS):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(function(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True
