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

And for deferred work (``handlers.deferred``):

* the bot also holds the leases of its exclusive handlers and ticket work (exact keys), writes
  the receipts of the tickets it submits or executes, keeps its schedules' cursors and puts
  their operations, and moves the delayed entries of every stream it writes to;
* ``<subsystem>-tickets`` for each subsystem whose tickets the app executes: submit tickets
  from outside any handler (``Tickets.submit``) and read their receipts (``Tickets.receipt``);
* ``<app>-cleaner`` when the app declares retention: the cleaner's lease and state, and
  exactly the removals its policies ask for (forget done statuses, trim, compact). Kept apart
  from the bot, which can neither trim a stream nor delete a status; bots clean as this user
  when given it (``streamcqrs run --cleaner-user``), and so does ``streamcqrs clean``.

``streamcqrs acl MODULE:APP`` prints them as ``ACL SETUSER`` lines.
"""

from __future__ import annotations

from collections.abc import Iterable

from streamcqrs.handlers.registry import App
from streamcqrs.handlers.tickets import CONCERN as TICKETS_CONCERN
from streamcqrs.handlers.tickets import KIND as TICKETS_KIND
from streamcqrs.streams import acl
from streamcqrs.streams.keys import Kind, SubsystemKeys, cleaner_lease, cleaner_state

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
            if target.kind is TICKETS_KIND:
                # A handler that may put into internal-ops may submit tickets there
                # (ctx.submit), each with its first receipt in the same commit.
                parts.append(acl.receipts(keys))
        for subsystem in sorted(spec.appends):
            parts.append(acl.append(_keys(app, subsystem)))
        for source in sorted(spec.reads):
            parts.append(acl.read(_keys(app, source.subsystem), source.kind))
        if spec.exclusive:
            parts.append(_lease(app, spec.source.subsystem, spec.exclusive))
    # On a cluster each bot relays its input partitions' outboxes into what it writes to.
    inputs_of = {s.subsystem for s, _ in app.groups()}
    targets = {t.subsystem for spec in app.handlers for t in spec.writes}
    targets |= {a for spec in app.handlers for a in spec.appends}
    parts.append(acl.relay([_keys(app, s) for s in sorted(inputs_of)],
                           [_keys(app, s) for s in sorted(targets)]))  # fmt: skip
    parts += _deferred_work(app)
    inputs = ", ".join(sorted({f"{s}/{c}" for s, c in app.groups()}))
    return acl.role(f"{app.name}-bot", parts, f"bots of app {app.name!r} ({inputs})")


def _lease(app: App, subsystem: str, key: str) -> acl.Grants:
    """The lease of exclusive access ``key``: in ``subsystem``'s partition that ``key`` names
    (``handlers.exclusive.lease_for``)."""
    found = _keys(app, subsystem).for_object(key).lease(key)
    return acl.lease(found, f"exclusive {key!r}")


def _deferred_work(app: App) -> list[acl.Grants]:
    """What a bot's deferred work needs beyond its handlers' declarations: the mover, the
    ticket executor's receipts and its work's leases, the timers."""
    deferred = app.deferred
    parts = [acl.move(_keys(app, ref.subsystem), ref.kind) for ref in sorted(app.delayed_streams())]
    for subsystem in sorted(deferred.tickets):
        parts.append(acl.receipts(_keys(app, subsystem), expire=True))
    for method in deferred.methods.values():
        sub = method.spec.source.subsystem
        if method.exclusive is not None and sub in deferred.tickets:
            parts.append(_lease(app, sub, method.exclusive.key))
    for schedule in sorted(deferred.schedules.values(), key=lambda s: s.name):
        target = schedule.target
        keys = _keys(app, target.subsystem)
        where = keys.for_object(schedule.object_id).schedules
        parts.append(acl.cursor(where, f"schedule {schedule.name!r}: its last due time"))
        # Exactly once per due time comes from the cursor, not from reading the stream.
        parts.append(acl.put(keys, target.kind, dedupe=False, prune=False, delay=False))
    return parts


def tickets(app: App, subsystem: str) -> acl.Role:
    """The user outside submitters of ``subsystem``'s tickets connect as (``Tickets``).

    ``Tickets.submit`` is meant for code outside any handler (a service, a script, an admin
    tool): it puts the ticket into ``subsystem``/internal-ops (write-only, parked in the
    delayed set when due later) with its first receipt, and ``Tickets.receipt`` reads the
    receipt back, with the executor's status of the ticket when it has not finished.
    """
    keys = _keys(app, subsystem)
    return acl.role(
        f"{subsystem}-tickets",
        [
            acl.put(keys, TICKETS_KIND, dedupe=False, prune=False),
            acl.receipts(keys, read=True),
            acl.concern_status(keys, TICKETS_KIND, TICKETS_CONCERN),
        ],
        f"outside submitters of {subsystem} tickets: put into {subsystem}/{TICKETS_KIND} "
        "(write-only), write and read receipts, read the executor's statuses; it can put any "
        "operation into that stream, so give it to trusted services only",
    )


def cleaner_user(app: App) -> str:
    """The name of ``app``'s cleaner user: what to log the cleaner in as."""
    return f"{app.name}-cleaner"


def cleaner(app: App) -> acl.Role | None:
    """The user the app's cleaner connects as (None: the app declares no retention).

    Apart from the bot: the cleaner trims streams and deletes statuses, which no bot may do.
    """
    policies = sorted(app.deferred.retention.values(), key=lambda p: str(p.stream))
    if not policies:
        return None
    parts = [
        acl.lease(cleaner_lease(app.name), f"lead the cleaner of {app.name!r}"),
        acl.Grants(grants=(acl.grant(
            [acl.escape(cleaner_state(app.name))], acl.Access.READ_WRITE, ("hset", "hmget"),
            "when the last cycle ran",
        ),)),
    ]  # fmt: skip
    for policy in policies:
        keys = _keys(app, policy.stream.subsystem)
        if policy.keep_done_for is not None or policy.trims:
            parts.append(acl.clean(keys, policy.stream.kind, trim=policy.trims))
        if policy.compact_aggregates:
            parts.append(acl.compact(keys))
    streams = ", ".join(str(p.stream) for p in policies)
    return acl.role(
        cleaner_user(app),
        parts,
        f"the cleaner of app {app.name!r} ({streams}): bots run with --cleaner-user, or "
        "'streamcqrs clean --username'; apart from the bot, which may not trim or forget",
    )


def api(app: App, kinds: Iterable[Kind] = API_KINDS) -> acl.Role:
    """The user an API serving the app's data connects as: read ``kinds`` only."""
    chosen = sorted(set(kinds))
    parts = [acl.read(_keys(app, s), k) for s in sorted(app.subsystems()) for k in chosen]
    names = ", ".join(str(k) for k in chosen)
    return acl.role(f"{app.name}-api", parts, f"APIs over app {app.name!r}: read {names} only")


def roles(app: App, api_kinds: Iterable[Kind] = API_KINDS) -> acl.Roles:
    """Every user of ``app``: one client per handled client-operation stream, one ticket
    submitter per subsystem whose tickets it executes, a bot, a cleaner if it declares
    retention, an API (reading ``api_kinds``)."""
    clients = [client(app, s) for s in client_subsystems(app)]
    submitters = [tickets(app, s) for s in sorted(app.deferred.tickets)]
    tidy = cleaner(app)
    cleaners = [tidy] if tidy is not None else []
    return acl.Roles((*clients, *submitters, bot(app), *cleaners, api(app, api_kinds)))


__all__ = [
    "API_KINDS",
    "api",
    "bot",
    "cleaner",
    "cleaner_user",
    "client",
    "client_subsystems",
    "roles",
    "tickets",
]
