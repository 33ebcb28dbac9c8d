"""What user code plugs into: handler declarations, the handler context, control flow."""

from handlers.context import AppendOutput, Context, Output, PutOutput
from handlers.control import NotYet, Retry
from handlers.registry import App, HandlerSpec, StreamRef

__all__ = [
    "App",
    "AppendOutput",
    "Context",
    "HandlerSpec",
    "NotYet",
    "Output",
    "PutOutput",
    "Retry",
    "StreamRef",
]
