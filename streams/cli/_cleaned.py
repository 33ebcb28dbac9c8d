"""What ``show`` says about a record the cleaner removed (all or part of).

The cleaner notes, per stream partition, up to where it trimmed the stream and, per concern,
before when done records lost their status and history (``streams.cleaning``). From those
notes ``show`` tells a cleaned record from one that never existed.
"""

from __future__ import annotations

from typing import Any

import redis

from streamcqrs.streams.cli._common import entry_ms, iso, sort_key
from streamcqrs.streams.envelope import as_str
from streamcqrs.streams.keys import Kind, PartitionKeys, SubsystemKeys
from streamcqrs.streams.statuses import decode_stored


def notes(client: redis.Redis, part: PartitionKeys, kind: Kind) -> dict[str, str]:
    """The cleaner's notes on one partition of a stream (empty if it never cleaned there)."""
    return {as_str(k): as_str(v) for k, v in client.hgetall(part.cleaned(kind)).items()}


def status_note(
    client: redis.Redis, part: PartitionKeys, kind: Kind, row: dict[str, Any], entry_id: str
) -> None:
    """Mark ``row`` (a concern's handling of a shown record) cleaned if its status is gone
    because the cleaner removed it: the concern read it, has nothing pending, and the record
    was put before the cutoff the cleaner last applied for that concern."""
    if row.get("history") or row.get("pending") or not row.get("read"):
        return
    cutoff = notes(client, part, kind).get(f"done:{row['concern']}")
    if cutoff and entry_ms(entry_id) <= int(cutoff):
        row["status"] = "cleaned"
        row["note"] = (
            f"status and history removed by retention (records done before {iso(int(cutoff))} "
            "are kept no longer)"
        )


def explain_missing(
    client: redis.Redis, keys: SubsystemKeys, kind: Kind, ident: str, by: str
) -> dict[str, Any] | None:
    """Why ``ident`` is not in the stream, if the cleaner trimmed it: a dict to show (with
    what handling statuses are left, say a Failed one), or None when nothing says so."""
    trims = [(part, notes(client, part, kind)) for part in keys.all()]
    trims = [(part, n) for part, n in trims if "trimmed_before" in n]
    if not trims:
        return None
    out: dict[str, Any] = {"id": ident, "cleaned": True}
    if by == "entry":
        older = [(p, n) for p, n in trims if sort_key(ident) < sort_key(n["trimmed_before"])]
        if not older:
            return None
        trims = older
    note = trims[0][1]
    out["note"] = (
        f"entries of {keys.subsystem}/{kind} before {note['trimmed_before']} "
        f"({iso(entry_ms(note['trimmed_before']))}) were trimmed by retention at "
        f"{iso(int(note.get('trimmed_at', '0')))}"
    )
    if by == "message":
        out["handling"] = _left(client, keys, kind, ident)
    elif by != "entry":
        out["definite"] = False  # an object id's latest record may be older or never was
    return out


def _left(
    client: redis.Redis, keys: SubsystemKeys, kind: Kind, record: str
) -> list[dict[str, Any]]:
    """The handling statuses still kept for ``record`` (Failed ones stay until an operator
    acts), per concern, from every partition's status hashes."""
    rows = []
    for part in keys.all():
        pattern = part.handling_status(kind, "x").rsplit(":x:", 1)[0] + ":*:status"
        for key in client.scan_iter(match=pattern.replace("{", "\\{").replace("}", "\\}")):
            stored = client.hget(key, record)
            if stored is None:
                continue
            status, history = decode_stored(stored)
            concern = as_str(key).rsplit(":", 2)[-2]
            rows.append({
                "concern": concern, "status": status.value,
                "history": [
                    {"at": iso(h.at_ms), "status": h.status.value, "action": h.action.value,
                     "details": h.details, "actor": h.actor}
                    for entry in history for h in entry.steps()
                ],
            })  # fmt: skip
    return rows


__all__ = ["explain_missing", "notes", "status_note"]
