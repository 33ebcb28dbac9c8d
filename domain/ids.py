"""Identifiers for messages: random, unique, cheap to make."""

from __future__ import annotations

import os


def new_message_id() -> str:
    """Return a fresh 128-bit message id as 32 hex characters."""
    return os.urandom(16).hex()
