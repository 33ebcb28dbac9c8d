"""Pydantic models only: operations, events, aggregates, ids and the type registry.

This layer never imports redis or any other layer; everything else stands on it.
"""

from domain.aggregate import Aggregate
from domain.errors import (
    ConcurrencyConflict,
    ConfigurationError,
    DecodeError,
    DuplicateRecord,
    EncodeError,
    HandlerError,
    HandlingError,
    InvalidTransition,
    PermissionDenied,
    RegistryError,
    RoleError,
    ServerUnavailable,
    StreamCQRSError,
    StreamError,
    UnknownMessageType,
)
from domain.ids import new_message_id
from domain.messages import Event, Message, Operation
from domain.registry import MessageType, TypeRegistry, message, registry

__all__ = [
    "Aggregate",
    "ConcurrencyConflict",
    "ConfigurationError",
    "DecodeError",
    "DuplicateRecord",
    "EncodeError",
    "Event",
    "HandlerError",
    "HandlingError",
    "InvalidTransition",
    "Message",
    "MessageType",
    "Operation",
    "PermissionDenied",
    "RegistryError",
    "RoleError",
    "ServerUnavailable",
    "StreamCQRSError",
    "StreamError",
    "TypeRegistry",
    "UnknownMessageType",
    "message",
    "new_message_id",
    "registry",
]
