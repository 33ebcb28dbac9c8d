"""The Redis users of the edge: the gateway's (which holds the credentials untrusted clients
never get) and the relay's, least privilege like the rest of ``streamcqrs acl``.

* ``<app>-gateway``: the client protocol on every client-operation stream the app takes
  (execute, status; write-only on the streams), read the app's views and events (GET, SSE),
  make and end subscriptions (their aggregates and views), put realtime triggers, read the
  token table.
* ``<relay>-bot``: what ``handlers.acl.bot`` derives from the relay's declarations, plus the
  receivers' leases and cursors (``pump.lua``, which reads the server's TIME).
"""

from __future__ import annotations

from functools import partial

from streamcqrs.bots.edge.pump import pump_key
from streamcqrs.bots.edge.subscriptions import REALTIME, SUBSCRIPTIONS
from streamcqrs.bots.edge.tokens import TOKENS, token_keys
from streamcqrs.handlers import App
from streamcqrs.handlers import acl as app_acl
from streamcqrs.streams import Kind, SubsystemKeys, acl

_PUMP = ("hget", "hset", "hdel", "hgetall")


def gateway(
    app: App,
    *,
    subscriptions: str = SUBSCRIPTIONS,
    subscription_partitions: int = 1,
    realtime: str = REALTIME,
    tokens: str = TOKENS,
) -> acl.Role:
    """The user ``streamcqrs gateway`` connects as for ``app``."""
    parts: list[acl.Grants] = []
    for subsystem in app_acl.client_subsystems(app):
        parts.append(app_acl.client(app, subsystem).grants)
    edge = {subscriptions, tokens, realtime}
    for subsystem in sorted(app.subsystems() - edge):
        keys = SubsystemKeys(subsystem, app.partitions_of(subsystem))
        parts += [acl.read(keys, Kind.VIEWS), acl.read(keys, Kind.EVENTS)]
    subs = SubsystemKeys(subscriptions, subscription_partitions)
    parts += [
        acl.append(subs),
        acl.put(subs, Kind.VIEWS, dedupe=False, delay=False),
        acl.read(subs, Kind.VIEWS),
        acl.put(SubsystemKeys(realtime), Kind.EVENTS, dedupe=False, prune=False, delay=False),
    ]
    by_hash = acl.escape(token_keys(tokens)[0])
    parts.append(acl.Grants(grants=(acl.grant([by_hash], acl.Access.READ, ("hget",),
                                              "check bearer tokens"),)))  # fmt: skip
    return acl.role(f"{app.name}-gateway", parts,
                    f"the HTTP gateway of app {app.name!r}: what its routes do, nothing more")


def relay(relay_app: App, *, subscriptions: str = SUBSCRIPTIONS) -> acl.Role:
    """The user the relay's bots connect as."""
    base = app_acl.bot(relay_app)
    keys = SubsystemKeys(subscriptions, relay_app.partitions_of(subscriptions))
    pumps = [acl.wildcard(partial(pump_key, part)) for part in keys.all()]
    extra = acl.Grants(
        frozenset(pumps),
        (
            acl.grant(pumps, acl.Access.READ_WRITE, _PUMP, "receivers' leases and cursors"),
            acl.grant([], acl.Access.READ, ("time",), "pump.lua reads the server's clock"),
        ),
    )
    return acl.Role(base.name, base.grants + extra, base.why + "; and the receivers' leases")


__all__ = ["gateway", "relay"]
