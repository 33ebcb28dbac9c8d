"""The directory of entities a notification can be sent to, and how each prefers to hear.

A real system would ask a user service; here it is a small table, built in or read from a
JSON file (``NOTIFICATION_DIRECTORY``), shaped like::

    {"alice": {"email": "alice@example.com", "slack_channel": "#alice",
               "preference": "both"}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from examples.notification.messages import Channel
from streamcqrs.domain.errors import ConfigurationError

Preference = Literal["email", "slack", "both", "none"]


CHANNELS_OF: Mapping[Preference, tuple[Channel, ...]] = {
    "email": ("email",),
    "slack": ("slack",),
    "both": ("email", "slack"),
    "none": (),
}
"""The channels each preference asks for."""


class Recipient(BaseModel):
    """One entity: where to reach it, and on which channels it wants to be reached."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    email: str = ""
    slack_channel: str = ""
    preference: Preference = "both"

    def channels(self) -> tuple[Channel, ...]:
        """The channels to use: the preferred ones the entity has an address for."""
        wanted = CHANNELS_OF[self.preference]
        have: dict[Channel, bool] = {"email": bool(self.email), "slack": bool(self.slack_channel)}
        return tuple(c for c in wanted if have[c])


class Directory(BaseModel):
    """Entities by id."""

    model_config = ConfigDict(frozen=True)

    entities: dict[str, Recipient] = Field(default_factory=dict)

    def get(self, entity: str) -> Recipient | None:
        """The entity's entry, or None if it is not in the directory."""
        return self.entities.get(entity)


DEFAULT_ENTITIES: Mapping[str, Recipient] = {
    "alice": Recipient(email="alice@example.com", slack_channel="#alice", preference="both"),
    "bob": Recipient(email="bob@example.com", slack_channel="#bob", preference="email"),
    "carol": Recipient(email="carol@example.com", slack_channel="#carol", preference="slack"),
    "dave": Recipient(email="dave@example.com", slack_channel="#dave", preference="none"),
    # The demo's local receivers refuse these two, to show the failure paths.
    "mallory": Recipient(email="bounce@example.com", slack_channel="#mallory", preference="both"),
    "erin": Recipient(email="erin@example.com", slack_channel="#slow", preference="both"),
}
"""The built-in directory (the demo's cast)."""


def load_directory(path: str | None) -> Directory:
    """The directory from a JSON file, or the built-in one when ``path`` is empty."""
    if not path:
        return Directory(entities=dict(DEFAULT_ENTITIES))
    try:
        raw = json.loads(Path(path).read_text())
        return Directory(entities={k: Recipient.model_validate(v) for k, v in raw.items()})
    except (OSError, ValueError, AttributeError, ValidationError) as exc:
        raise ConfigurationError(
            f"cannot read the recipient directory {path!r}: {exc}; it must be a JSON object "
            'of {"entity": {"email": ..., "slack_channel": ..., "preference": ...}}'
        ) from exc


__all__ = ["DEFAULT_ENTITIES", "Directory", "Preference", "Recipient", "load_directory"]
