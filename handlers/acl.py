"""The Redis ACL users an app needs, derived from what its handlers declared.

Three kinds of user, each allowed only what its part of the Naos workflow does:

* ``<subsystem>-client`` for each subsystem whose client operations the app handles: the
  client protocol (``streams.client``): put into that client-operation stream, take tracking
  ids (INCR only), guard puts with idempotency keys, ask an operation's status (handling
  statuses, pending, dead-letter index). Write-only on the stream: it cannot read it back,
  nor write anywhere else. It is for trusted services: Redis ACLs cannot restrict XADD's
  options (MAXLEN, explicit ids); untrusted clients go through the HTTP gateway.
* ``<app>-bot``: consume each handler's input stream for its concern (consumer group,
  handling status, delayed set, dead letters), put only into the streams declared in
  ``writes``, append only to the aggregates declared in ``appends``, read what ``reads`` names.
* ``<app>-api``: read the views and events of the app's subsystems, nothing else.

``streamcqrs acl MODULE:APP`` prints them as ``ACL SETUSER`` lines.
"""

from __future__ import annotations

from collections.abc import Iterable

from streamcqrs.handlers.registry import App
from streamcqrs.streams import acl
from streamcqrs.streams.keys import Kind, SubsystemKeys

API_KINDS = (Kind.VIEWS, Kind.EVENTS)
"""What an API reads by default: views (served raw) and events (audit, live state)."""


def _keys(app: App, subsystem: str) -> SubsystemKeys:
    return SubsystemKeys(subsystem, app.partitions_of(subsystem))


def client_subsystems(app: App) -> list[str]:
    """Subsystems whose client-operation stream a handler of ``app`` consumes."""
    return sorted(
        {s.source.subsystem for s in app.handlers if s.source.kind is Kind.CLIENT_OPERATIONS}
    )


def client(app: App, subsystem: str) -> acl.Role:
    """The user outside clients of ``subsystem`` connect as: execute operations, ask status."""
    keys = _keys(app, subsystem)
    kind = Kind.CLIENT_OPERATIONS
    return acl.role(
        f"{subsystem}-client",
        # No dedupe (it would read the stream), no prune (operations are never pruned).
        [
            acl.put(keys, kind, dedupe=False, prune=False),
            acl.next_id(keys, kind),
            acl.execute(keys, kind),
            acl.status(keys, kind),
        ],
        f"outside clients of {subsystem}: execute into {subsystem}/{kind} and ask status; "
        "write-only on the stream",
    )


def bot(app: App) -> acl.Role:
    """The user the app's bot processes connect as: exactly what the handlers declared."""
    parts: list[acl.Grants] = []
    groups = app.groups()
    for source, concern in sorted(groups):
        keys = _keys(app, source.subsystem)
        ordered = groups[(source, concern)][0].ordered
        parts.append(acl.consume(keys, source.kind, concern, ordered=ordered))
        # Bad input goes to the source subsystem's dead-letter stream, once per entry however
        # many concerns read it (a put with OnExisting.SKIP: dedupe reads the index).
        parts.append(acl.put(keys, Kind.DEAD_LETTERS, dedupe=True, prune=False, delay=False))
    for spec in app.handlers:
        for target in sorted(spec.writes):
            keys = _keys(app, target.subsystem)
            parts += [acl.put(keys, target.kind), acl.next_id(keys, target.kind)]
        for subsystem in sorted(spec.appends):
            parts.append(acl.append(_keys(app, subsystem)))
        for source in sorted(spec.reads):
            parts.append(acl.read(_keys(app, source.subsystem), source.kind))
    # On a cluster each bot relays its input partitions' outboxes into what it writes to.
    inputs_of = {s.subsystem for s, _ in app.groups()}
    targets = {t.subsystem for spec in app.handlers for t in spec.writes}
    targets |= {a for spec in app.handlers for a in spec.appends}
    parts.append(acl.relay([_keys(app, s) for s in sorted(inputs_of)],
                           [_keys(app, s) for s in sorted(targets)]))  # fmt: skip
    inputs = ", ".join(sorted({f"{s}/{c}" for s, c in app.groups()}))
    return acl.role(f"{app.name}-bot", parts, f"bots of app {app.name!r} ({inputs})")


def api(app: App, kinds: Iterable[Kind] = API_KINDS) -> acl.Role:
    """The user an API serving the app's data connects as: read ``kinds`` only."""
    chosen = sorted(set(kinds))
    parts = [acl.read(_keys(app, s), k) for s in sorted(app.subsystems()) for k in chosen]
    names = ", ".join(str(k) for k in chosen)
    return acl.role(f"{app.name}-api", parts, f"APIs over app {app.name!r}: read {names} only")


def roles(app: App, api_kinds: Iterable[Kind] = API_KINDS) -> acl.Roles:
    """Every user of ``app``: one client per handled client-operation stream, a bot, an API
    (reading ``api_kinds``)."""
    clients = [client(app, s) for s in client_subsystems(app)]
    return acl.Roles((*clients, bot(app), api(app, api_kinds)))


__all__ = ["API_KINDS", "api", "bot", "client", "client_subsystems", "roles"]
