"""What each dashboard page shows, read from the server with the operator commands' own code.

The figures are ``streamcqrs status``'s (``bots.status``); a record and its history per
concern are ``streamcqrs show``'s; dead letters and failed records, and retrying or archiving
them, are ``streamcqrs dead-letters`` and ``failed`` (``streams.cli``): the dashboard adds
pages and buttons, not another way of doing the same thing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from streamcqrs.bots.status import GroupStatus, app_status
from streamcqrs.handlers.registry import App
from streamcqrs.streams.cli import CommandError
from streamcqrs.streams.cli._common import describe, iso
from streamcqrs.streams.cli._deadletters import (
    Found,
    act_on_dead_letter,
    chosen_letters,
    dead_letters,
    origin,
)
from streamcqrs.streams.cli._failed import FailedRecord, archive, failed_records, retry
from streamcqrs.streams.cli._records import concerns, find, newest
from streamcqrs.streams.commit import Commit
from streamcqrs.streams.keys import Kind, SubsystemKeys
from streamcqrs.streams.statuses import decode_stored

NEWEST = 50
"""Records a stream's page lists, newest last."""


@dataclass(frozen=True, slots=True)
class Group:
    """One consumer group on one stream partition, as ``streamcqrs status`` reports it."""

    kind: Kind
    partition: int
    figures: GroupStatus


@dataclass(frozen=True, slots=True)
class Subsystem:
    """One subsystem's consumer groups, for the overview."""

    name: str
    groups: list[Group] = field(default_factory=list)

    @property
    def dead_letters(self) -> int:
        """Open dead letters over its partitions (each group row repeats its partition's)."""
        return sum({g.partition: g.figures.dead_letters for g in self.groups}.values())


class Pages:
    """The data behind the pages of one app on one server (a sync client: pages run in
    threads)."""

    def __init__(self, app: App, client: redis.Redis) -> None:
        self.app = app
        self.client = client

    def keys(self, subsystem: str) -> SubsystemKeys:
        """The key scheme of ``subsystem`` as the app declares its partitions."""
        return SubsystemKeys(subsystem, self.app.partitions_of(subsystem))

    def overview(self) -> list[Subsystem]:
        """Every subsystem the app consumes, with each group's figures."""
        by_name: dict[str, Subsystem] = {}
        for row in app_status(self.client, self.app):
            part, kind = origin(row.stream)
            group = Group(kind, part.partition, row)
            by_name.setdefault(part.subsystem, Subsystem(part.subsystem)).groups.append(group)
        return [by_name[name] for name in sorted(by_name)]

    def newest(self, subsystem: str, kind: Kind) -> list[dict[str, Any]]:
        """The newest records of a stream over its partitions, oldest first, decoded."""
        keys = self.keys(subsystem)
        ends = {part.stream(kind): "+" for part in keys.all()}
        return [describe(*each) for each in newest(self.client, keys, kind, NEWEST, ends)]

    def record(
        self, subsystem: str, kind: Kind, ident: str, partition: int | None = None
    ) -> dict[str, Any] | None:
        """One record (by entry, message or object id) and each concern's handling of it:
        read or not, pending on which consumer, its status and history."""
        found = find(self.client, self.keys(subsystem), kind, ident, "auto", partition=partition)
        if found is None:
            return None
        key, entry_id, _ = found
        record = describe(*found)
        record["handling"] = concerns(self.client, key, entry_id)
        part, _ = origin(key)
        record["partition"] = part.partition
        for row in record["handling"]:
            if "id" not in record:
                continue
            stored = self.client.hget(part.handling_status(kind, row["concern"]), record["id"])
            status, history = decode_stored(stored)
            row["status"] = status.value
            row["history"] = [
                {"at": iso(h.at_ms), "status": h.status.value, "action": h.action.value,
                 "details": h.details, "actor": h.actor, "attempt": h.attempt}
                for h in history
            ]  # fmt: skip
        record["data_json"] = orjson.dumps(record.get("data"), option=orjson.OPT_INDENT_2,
                                           default=str).decode()  # fmt: skip
        return record

    def dead_letters(self, subsystem: str) -> tuple[list[Found], str]:
        """Every dead letter of ``subsystem`` with its mark, newest first, and any notes about
        entries of the dead-letter stream that could not be read."""
        notes = io.StringIO()
        found = list(dead_letters(self.client, self.keys(subsystem), notes))
        found.reverse()
        return found, notes.getvalue()

    def act_on_dead_letter(self, subsystem: str, ident: str, act: str) -> str:
        """Retry or archive the open dead letter(s) named ``ident``; what was done."""
        found, _ = self.dead_letters(subsystem)
        chosen = chosen_letters(found, [ident], False)
        return "; ".join(act_on_dead_letter(self.client, each, act) for each in chosen)

    def failed(self, subsystem: str, kind: Kind, concern: str) -> list[FailedRecord]:
        """The records of a stream whose handling Failed for ``concern``."""
        return failed_records(self.client, self.keys(subsystem), kind, concern, io.StringIO())

    def act_on_failed(self, subsystem: str, kind: Kind, concern: str, ident: str, act: str) -> str:
        """Retry or archive one Failed record (and its dead letter); what was done."""
        chosen = [r for r in self.failed(subsystem, kind, concern) if r.record == ident]
        if not chosen:
            raise CommandError(f"record {ident} is not Failed for {concern} on {subsystem}/{kind}")
        batch = Commit()
        if act == "archive":
            archive(batch, chosen[0], kind, concern)
        else:
            retry(batch, chosen[0], kind, concern)
        batch.run_sync(self.client)
        return f"{'archived' if act == 'archive' else 'retried'} {ident} for {concern}"

    def view(self, subsystem: str, object_id: str) -> str | None:
        """The latest view of ``object_id`` as indented JSON, or None."""
        found = find(self.client, self.keys(subsystem), Kind.VIEWS, object_id, "object")
        if found is None:
            return None
        record = describe(*found)
        return orjson.dumps(record.get("data"), option=orjson.OPT_INDENT_2).decode()


__all__ = ["NEWEST", "Group", "Pages", "Subsystem"]
