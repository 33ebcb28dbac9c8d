"""An app that loads in the supervisor but not in its workers (see ``tests.cliapps``)."""

from __future__ import annotations

import multiprocessing

from streamcqrs.domain.errors import ConfigurationError
from tests.cliapps import app

if multiprocessing.parent_process() is not None:
    raise ConfigurationError("this worker's settings are wrong (a test of the supervisor)")

__all__ = ["app"]
