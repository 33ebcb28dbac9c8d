"""Aggregates: state folded from events, with the version of the last event applied."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self

from pydantic import BaseModel, ConfigDict

from streamcqrs.domain.messages import Event


class Aggregate(BaseModel):
    """Base for an aggregate's state; subclasses say how each event changes it in ``apply``.

    ``version`` counts the events applied: a new aggregate is at 0, after its first event at 1.
    The model is a pydantic model so a snapshot is just its serialized form.
    """

    model_config = ConfigDict(validate_assignment=False, extra="forbid")

    id: str
    version: int = 0

    def apply(self, event: Event) -> None:
        """Change this state by one event; override in each aggregate class."""
        raise NotImplementedError(
            f"{type(self).__qualname__}.apply must handle {type(event).__qualname__}"
        )

    def fold(self, events: Iterable[Event]) -> Self:
        """Apply ``events`` in order, counting each one into ``version``; return self."""
        for event in events:
            self.apply(event)
            self.version += 1
        return self
