"""Startup and shutdown hooks: resources made once per worker process and handed to handlers.

An HTTP client, a database pool or an SMTP connection is made once, when a bot process starts,
not once per message::

    @app.on_startup
    async def open_http(resources: Resources) -> None:
        resources["http"] = httpx.AsyncClient(timeout=10)

    @app.on_shutdown
    async def close_http(resources: Resources) -> None:
        await resources["http"].aclose()

    @app.handler(Notify, stream="shop/client-ops")
    async def notify(op: Notify, ctx: Context) -> None:
        await ctx.resources["http"].post(op.url, json=op.body)

A bot runs the startup hooks in the order they were declared, before it reads anything, and
the shutdown hooks in reverse order once its in-flight work is committed or released. Each
worker process has its own resources. Hooks may be ``async def`` or plain ``def``.
``HandlerTest`` runs them too (``async with HandlerTest(app) as test``), or takes resources
made by the test.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers.errors import HandlerError, StartupFailed

Hook = Callable[["Resources"], Awaitable[None] | None]
"""A startup or shutdown hook: gets the process's resources."""


class Resources(dict[str, Any]):
    """What the startup hooks made, by name; a handler reads it as ``ctx.resources``."""

    def __missing__(self, name: str) -> Any:
        known = ", ".join(sorted(self)) or "none"
        raise HandlerError(
            f"no resource {name!r} (made so far: {known}); make it in an @app.on_startup hook "
            f"with resources[{name!r}] = ..."
        )


async def _call(hook: Hook, resources: Resources) -> None:
    result = hook(resources)
    if inspect.isawaitable(result):
        await result


def hook_name(hook: Hook) -> str:
    """``module.function`` of a hook, for logs and errors."""
    return f"{getattr(hook, '__module__', '?')}.{getattr(hook, '__qualname__', repr(hook))}"


async def start(hooks: Sequence[Hook], resources: Resources) -> None:
    """Run the startup hooks in order; StartupFailed naming the one that raised.

    A ConfigurationError from a hook passes through as it is: no restart can fix it, and the
    supervisor stops instead of starting the worker again.
    """
    for hook in hooks:
        try:
            await _call(hook, resources)
        except ConfigurationError:
            raise
        except Exception as exc:
            raise StartupFailed(
                f"startup hook {hook_name(hook)} failed: {type(exc).__name__}: {exc}; fix what "
                "it needs (a server, a setting) or raise ConfigurationError to stop for good"
            ) from exc


async def stop(hooks: Sequence[Hook], resources: Resources, log: Any = None) -> None:
    """Run the shutdown hooks in reverse order; one that raises is logged and the rest run."""
    for hook in reversed(hooks):
        try:
            await _call(hook, resources)
        except Exception as exc:
            if log is not None:
                log.exception("shutdown hook failed", hook=hook_name(hook), error=str(exc))


__all__ = ["Hook", "Resources", "StartupFailed", "hook_name", "start", "stop"]
