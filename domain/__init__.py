"""Pydantic models only: operations, events, aggregates, ids and the type registry.

This layer never imports redis or any other layer; everything else stands on it.
"""

from streamcqrs.domain.aggregate import Aggregate
from streamcqrs.domain.errors import (
    ConcurrencyConflict,
    ConfigurationError,
    RegistryError,
    StreamCQRSError,
    UnknownMessageType,
)
from streamcqrs.domain.ids import new_message_id
from streamcqrs.domain.messages import Event, Message, Operation
from streamcqrs.domain.policy import ExecutionPolicy
from streamcqrs.domain.registry import MessageType, TypeRegistry, message, registry

__all__ = [
    "Aggregate",
    "ConcurrencyConflict",
    "ConfigurationError",
    "Event",
    "ExecutionPolicy",
    "Message",
    "MessageType",
    "Operation",
    "RegistryError",
    "StreamCQRSError",
    "TypeRegistry",
    "UnknownMessageType",
    "message",
    "new_message_id",
    "registry",
]
