"""The integration edge: an HTTP gateway, subscriptions, the webhook relay, live push.

Built on ``handlers`` and ``streams`` only; the relay is an ``App`` that ``streamcqrs run``
runs as a bot. Needs the ``edge`` extra (``pip install 'streamcqrs[edge]'``).
"""

from streamcqrs.bots.edge.channels import Channel
from streamcqrs.bots.edge.relay import RelayConfig, relay_app
from streamcqrs.bots.edge.subscriptions import (
    AccessDenied,
    Subscribing,
    SubscriptionError,
    Subscriptions,
    SubscriptionView,
)

__all__ = [
    "AccessDenied",
    "Channel",
    "RelayConfig",
    "Subscribing",
    "SubscriptionError",
    "SubscriptionView",
    "Subscriptions",
    "relay_app",
]
