"""The two kinds of message: operations (work asked for) and events (facts that happened)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from streamcqrs.domain.policy import ExecutionPolicy


class Message(BaseModel):
    """An immutable pydantic model that can travel through a stream."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Operation(Message):
    """Work a subsystem is asked to do; put into an operation stream, handled by a bot.

    ``policy`` (a class attribute, not a field): the ``ExecutionPolicy`` every put of this
    operation carries unless the put gives its own.
    """

    policy: ClassVar[ExecutionPolicy | None] = None


class Event(Message):
    """A change that happened to an aggregate; appended to its event stream, never altered."""
