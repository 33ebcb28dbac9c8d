"""What user code plugs into: handler declarations, the handler context, control flow.

The machinery behind them (what a run emitted, the runner, the registry's specs) stays in
its modules.
"""

from streamcqrs.handlers.context import Context
from streamcqrs.handlers.errors import Fail, HandlerError, NotYet, Retry, StartupFailed
from streamcqrs.handlers.exclusive import Exclusive
from streamcqrs.handlers.lifecycle import Resources
from streamcqrs.handlers.registry import App
from streamcqrs.handlers.tickets import Receipt, Tickets

__all__ = [  # noqa: RUF022 (grouped by use, not sorted)
    # Declaring an app and its handlers
    "App",
    "Context",
    "Exclusive",
    "Resources",
    # Control flow a handler raises
    "Fail",
    "NotYet",
    "Retry",
    # Deferred work
    "Receipt",
    "Tickets",
    # Errors
    "HandlerError",
    "StartupFailed",
]
