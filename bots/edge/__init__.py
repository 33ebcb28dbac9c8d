"""The integration edge: an HTTP gateway, subscriptions, the webhook relay, live push.

Built on ``handlers`` and ``streams`` only; the relay is an ``App`` that ``streamcqrs run``
runs as a bot. Needs the ``edge`` extra (``pip install 'streamcqrs[edge]'``): the names below
are imported on first use, so ``streamcqrs`` runs without it.

==================  ========================================================================
``subscriptions``   ``Subscriptions``: subscribe, replace the cookie, end; realtime triggers
``relay``           ``relay_app(watch=[...])``: the webhook relay, an app for ``streamcqrs run``
``gateway``         ``create_gateway(app)``: the FastAPI gateway; ``streamcqrs gateway``
``tokens``          ``Tokens``: the gateway's bearer tokens; ``streamcqrs token``
``live``            ``Hub``: Server-Sent Events of events and view versions
``receiver``        ``cookie_receiver``: the receiving side, a cookie becomes an operation
``channels``        ``Channel``: ``event://SUBSYSTEM/STREAM/TYPE`` with ``*``
``webhooks``        the delivery's body, Standard Webhooks signature, and POST
==================  ========================================================================
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamcqrs.bots.edge.channels import Channel
    from streamcqrs.bots.edge.gateway import create_gateway
    from streamcqrs.bots.edge.receiver import Delivery, cookie_receiver
    from streamcqrs.bots.edge.relay import RelayConfig, relay_app
    from streamcqrs.bots.edge.subscriptions import (
        AccessDenied,
        Subscribing,
        SubscriptionError,
        Subscriptions,
        SubscriptionView,
    )
    from streamcqrs.bots.edge.tokens import Token, Tokens

_WHERE = {
    "AccessDenied": "subscriptions",
    "Channel": "channels",
    "Delivery": "receiver",
    "cookie_receiver": "receiver",
    "RelayConfig": "relay",
    "SubscriptionError": "subscriptions",
    "SubscriptionView": "subscriptions",
    "Subscribing": "subscriptions",
    "Subscriptions": "subscriptions",
    "Token": "tokens",
    "Tokens": "tokens",
    "create_gateway": "gateway",
    "relay_app": "relay",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"streamcqrs.bots.edge.{module}"), name)


__all__ = [
    "AccessDenied",
    "Channel",
    "Delivery",
    "RelayConfig",
    "Subscribing",
    "SubscriptionError",
    "SubscriptionView",
    "Subscriptions",
    "Token",
    "Tokens",
    "cookie_receiver",
    "create_gateway",
    "relay_app",
]
