"""streamcqrs: event-driven subsystems over Redis Streams, following the Naos workflow.

``import streamcqrs`` gives the names a user of the README tour needs: the message and
aggregate models, ``message`` to register a type, ``App`` and ``Context`` for handlers, the
control-flow exceptions, ``Subsystem`` and ``Client`` for producers and readers, and the
error root. The layers stay importable on their own (``streamcqrs.domain``,
``streamcqrs.streams``, ``streamcqrs.handlers``, ``streamcqrs.bots``); the names here load
their layer on first use, so importing ``streamcqrs.domain`` never pulls in redis.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_HOMES = {
    # Messages and aggregates
    "Aggregate": "streamcqrs.domain",
    "Event": "streamcqrs.domain",
    "Message": "streamcqrs.domain",
    "Operation": "streamcqrs.domain",
    "message": "streamcqrs.domain",
    # Handlers
    "App": "streamcqrs.handlers",
    "Context": "streamcqrs.handlers",
    "Fail": "streamcqrs.handlers",
    "NotYet": "streamcqrs.handlers",
    "Resources": "streamcqrs.handlers",
    "Retry": "streamcqrs.handlers",
    # Producers and readers
    "Client": "streamcqrs.streams",
    "OnExisting": "streamcqrs.streams",
    "Settings": "streamcqrs.streams",
    "Subsystem": "streamcqrs.streams",
    # Errors
    "StreamCQRSError": "streamcqrs.domain",
}

__all__ = [
    "Aggregate",
    "App",
    "Client",
    "Context",
    "Event",
    "Fail",
    "Message",
    "NotYet",
    "OnExisting",
    "Operation",
    "Resources",
    "Retry",
    "Settings",
    "StreamCQRSError",
    "Subsystem",
    "__version__",
    "message",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'streamcqrs' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from streamcqrs.domain import Aggregate, Event, Message, Operation, message
    from streamcqrs.domain.errors import StreamCQRSError
    from streamcqrs.handlers import App, Context, Fail, NotYet, Resources, Retry
    from streamcqrs.streams import Client, OnExisting, Settings, Subsystem
