"""The two kinds of message: operations (work asked for) and events (facts that happened)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Message(BaseModel):
    """An immutable pydantic model that can travel through a stream."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Operation(Message):
    """Work a subsystem is asked to do; put into an operation stream, handled by a bot."""


class Event(Message):
    """A change that happened to an aggregate; appended to its event stream, never altered."""
