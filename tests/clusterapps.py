"""Apps the cluster tests run as real bot processes (``streamcqrs run tests.clusterapps:...``).

``botapps`` is ``tests.botapps``'s app with its subsystem in 4 partitions, so that on a
3-shard cluster its inputs, aggregates (``job-n``) and notes spread over every shard and most
outputs cross slots. ``notification`` is the notification example with 4 partitions for each
of its subsystems.
"""

from __future__ import annotations

from dataclasses import replace

from examples.notification.app import app as notification_app
from tests.botapps import SUBSYSTEM
from tests.botapps import app as botapps_app

PARTITIONS = 4
"""Partitions of every subsystem in these apps."""

botapps = replace(botapps_app, partitions={SUBSYSTEM: PARTITIONS})
notification = replace(
    notification_app,
    partitions={name: PARTITIONS for name in ("notification", "email", "slack")},
)

__all__ = ["PARTITIONS", "botapps", "notification"]
