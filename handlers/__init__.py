"""What user code plugs into: handler declarations, the handler context, control flow."""

from streamcqrs.handlers.context import AppendOutput, Context, Output, PutOutput
from streamcqrs.handlers.errors import Fail, HandlerError, NotYet, Retry, StartupFailed
from streamcqrs.handlers.exclusive import Exclusive
from streamcqrs.handlers.lifecycle import Resources
from streamcqrs.handlers.registry import App, HandlerSpec, StreamRef
from streamcqrs.handlers.tickets import Receipt, Tickets

__all__ = [
    "App",
    "AppendOutput",
    "Context",
    "Exclusive",
    "Fail",
    "HandlerError",
    "HandlerSpec",
    "NotYet",
    "Output",
    "PutOutput",
    "Receipt",
    "Resources",
    "Retry",
    "StartupFailed",
    "StreamRef",
    "Tickets",
]
