"""AsyncAPI 3.0.0 documents of an app, made from its handler declarations alone.

What for: one file tells a reader in any language which streams an app consumes and writes,
what an entry of each holds and which handler does what; AsyncAPI tools render it, lint it
or generate clients from it. Nothing connects to a server.

How the app maps onto AsyncAPI:

* **channel**: one per stream (subsystem, kind) a handler consumes, writes, appends to or
  reads, plus ``<subsystem>/aggregates`` (each aggregate's own stream) for each subsystem
  appended to and ``<subsystem>/dead`` for each subsystem consumed. The address is the key
  with the partition's hash tag as a parameter, ``{partition}:events``: AsyncAPI reads braces
  as a parameter, so the literal tag ``{notification.0}`` cannot stand in an address; the
  parameter's ``enum`` lists the tags, braces included.
* **message**: one per registered type, its payload the model's JSON schema and its headers
  the envelope fields of the entry (``streams.envelope``). The app declares the streams a
  handler writes, not the types it writes there, so a channel lists the types the app's
  handlers consume from it; views, snapshots and streams the app does not consume get a
  message that says what is (and is not) known.
* **operation**: a ``receive`` per handler on its input stream (its consumer group is its
  concern), a ``send`` per stream it writes, two per subsystem it appends to (the events
  stream and the aggregates' own streams), and the bots' ``send`` of dead letters.

Payload schemas come from pydantic, all models at once so that two nested models of one name
stay apart, with ``$defs`` landing in ``components/schemas``. They are written in draft-07
form because AsyncAPI's Schema Object is a superset of JSON Schema draft 07, not of the
2020-12 pydantic writes: a fixed tuple's ``prefixItems`` becomes ``items: [...]``, and the
OpenAPI-style ``discriminator`` object (a string in AsyncAPI, with another meaning) is left
out, its ``oneOf`` of tagged variants telling them apart by itself.

``python -m streamcqrs.handlers.asyncapi MODULE:APP`` prints the document.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.domain.messages import Message
from streamcqrs.domain.registry import MessageType, registry
from streamcqrs.handlers.registry import App, HandlerSpec
from streamcqrs.streams.deadletter import DeadLetter
from streamcqrs.streams.keys import Kind, SubsystemKeys

JsonObject = dict[str, Any]
"""A JSON object as ``json.loads`` returns it: the document and each of its parts."""

AGGREGATES = "aggregates"
"""The channel of a subsystem's aggregate streams (one key per aggregate, not a Kind)."""
MSGPACK = "application/msgpack"
ENVELOPE = "streamcqrs.EntryFields"
VIEW, SNAPSHOT, UNTYPED = "streamcqrs.View", "streamcqrs.Snapshot", "streamcqrs.Untyped"
DEAD_LETTER = registry.of_class(DeadLetter).name
KEY_CHARS = r"[^A-Za-z0-9._-]"
"""What a components key may not hold (AsyncAPI: ``^[a-zA-Z0-9.\\-_]+$``)."""

ABOUT_KIND = {
    Kind.CLIENT_OPERATIONS: "Operations from outside clients; `obj` is the tracking id.",
    Kind.INTERNAL_OPERATIONS: "The subsystem's own follow-up work. Delayed work waits in a "
    "sorted set until due, then is moved here.",
    Kind.SAGAS: "One entry per unit of work a saga awaits.",
    Kind.EVENTS: "Every event appended to an aggregate of the subsystem, in commit order.",
    Kind.VIEWS: "JSON shaped for a UI, newest per object id; an API returns it as it is.",
    Kind.SNAPSHOTS: "An aggregate's state at a version, so a load folds only later events.",
    Kind.DEAD_LETTERS: "What a bot could not handle, with the reason and the original fields.",
    AGGREGATES: "One stream per aggregate: its events in order, each with `seq`, its version.",
}

ENTRY_FIELDS: JsonObject = {
    "type": "object",
    "description": "A stream entry is a map of fields: these, and `data`, the payload. Every "
    "value is a Redis string; numbers are written in decimal.",
    "required": ["id", "type", "schema", "fmt"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "description": "Message id, the dedupe key: "
               "32 lowercase hex characters when streamcqrs makes it."},
        "type": {"type": "string", "description": "Registered type name, never a class name."},
        "schema": {"type": "string", "pattern": "^[1-9][0-9]*$", "description": "Schema "
                   "version of the payload; older versions are lifted by upcasters on read."},
        "obj": {"type": "string", "description": "Object id (aggregate id, tracking id); it "
                "chooses the partition. May be empty."},
        "corr": {"type": "string", "description": "Correlation id: the id of the first "
                 "message of the conversation (a first message's own id)."},
        "cause": {"type": "string", "description": "Causation id: the id of the message that "
                  "led to this one. May be empty."},
        "at": {"type": "string", "pattern": "^[0-9]+$", "description": "Created at, epoch ms."},
        "tags": {"type": "string", "format": "binary", "description": "msgpack array of "
                 "[name, value] string pairs (a name may repeat), or empty."},
        "fmt": {"enum": ["m", "j"], "description": "`m`: `data` is msgpack of the model; "
                "`j`: `data` is JSON bytes (views, snapshots)."},
        "seq": {"type": "string", "pattern": "^[1-9][0-9]*$", "description": "Aggregate "
                "events only: the aggregate's version after this event."},
    },
}  # fmt: skip


class Draft7Schema(GenerateJsonSchema):
    """Pydantic's JSON schema in the draft-07 form AsyncAPI's Schema Object is built on."""

    def tuple_schema(self, schema: core_schema.TupleSchema) -> JsonSchemaValue:
        """A tuple's leading items as draft 07's ``items: [...]``, the rest as additionalItems."""
        json_schema = super().tuple_schema(schema)
        prefix = json_schema.pop("prefixItems", None)
        if prefix is not None:
            rest = json_schema.pop("items", False)  # absent: a fixed-length tuple
            json_schema["items"] = prefix
            if rest is not True:
                json_schema["additionalItems"] = rest
        return json_schema

    def tagged_union_schema(self, schema: core_schema.TaggedUnionSchema) -> JsonSchemaValue:
        """The variants' ``oneOf`` without OpenAPI's discriminator object."""
        json_schema = super().tagged_union_schema(schema)
        json_schema.pop("discriminator", None)
        return json_schema


def asyncapi_document(
    app: App,
    *,
    title: str | None = None,
    version: str = "0.1.0",
    server_url: str | None = None,
) -> JsonObject:
    """The AsyncAPI 3.0.0 document of ``app``: JSON-ready, the same for the same app.

    ``version`` is the version of the API the document describes (pass your app's);
    ``server_url`` adds a server, without the URL's credentials or query.
    """
    build = _Builder(app)
    document: JsonObject = {
        "asyncapi": "3.0.0",
        "info": {
            "title": title or app.name,
            "version": version,
            "description": f"The streams and handlers of the streamcqrs app `{app.name}`, "
            "generated from its declarations. Each channel is a Redis stream; an entry's "
            "fields other than `data` are the message headers, `data` its payload. Put through "
            "streamcqrs (its commit script keeps the latest-by-id and tag indexes and "
            "de-duplicates by message id): a bare XADD of these fields is read by bots but "
            "not indexed.",
        },
        "defaultContentType": MSGPACK,
    }
    if server_url is not None:
        document["servers"] = {"redis": _server(server_url)}
    document["channels"] = build.channels
    document["operations"] = build.operations()
    document["components"] = {"messages": build.messages, "schemas": build.schemas}
    # A plain JSON tree of its own: nothing shared with the module's constants or another
    # document, and no object twice within it (YAML would write anchors and aliases for those).
    plain: JsonObject = json.loads(json.dumps(document))
    return plain


Stream = tuple[str, str]
"""(subsystem, kind): a Kind's value, or ``AGGREGATES``."""


class _Builder:
    """The parts of one app's document, and the ids that tie them together."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.roles = _streams(app)
        self.handled = _handled(app)
        self.types: dict[type[Message], MessageType] = {
            cls: app.types.of_class(cls) for types in self.handled.values() for cls in types
        }
        if any(kind == Kind.DEAD_LETTERS for _, kind in self.roles):
            self.types[DeadLetter] = registry.of_class(DeadLetter)
        classes = sorted(self.types, key=lambda cls: self.types[cls].name)
        payloads, definitions = _schemas(classes)
        messages = {self.types[c].name: _message(self.types[c], payloads[c]) for c in classes}
        messages |= _untyped_messages()
        self.keys = _unique({name: _ident(name, KEY_CHARS) for name in sorted(messages)})
        self.schemas = dict(sorted({**definitions, ENVELOPE: ENTRY_FIELDS}.items()))
        wanted = {s: _ident(f"{s[0]}_{s[1]}".replace("-", "_")) for s in sorted(self.roles)}
        self.channel_ids = _unique(wanted)
        self.channels = {
            cid: self._channel(stream)
            for stream, cid in sorted(self.channel_ids.items(), key=lambda kv: kv[1])
        }
        used = {key for channel in self.channels.values() for key in channel["messages"]}
        self.messages = {
            self.keys[name]: messages[name] for name in sorted(messages) if self.keys[name] in used
        }

    def _channel(self, stream: Stream) -> JsonObject:
        subsystem, kind = stream
        keys = SubsystemKeys(subsystem, self.app.partitions_of(subsystem))
        tags = [part.tag for part in keys.all()]
        which = (
            f"`{{{subsystem}.p}}` for partition p = crc32(`obj`, or `id` when `obj` is empty) "
            f"% {keys.partitions}"
            if keys.partitions > 1
            else f"`{tags[0]}`: {subsystem} has one partition"
        )
        parameters: JsonObject = {
            "partition": {
                "description": f"The partition's hash tag, braces included: {which}.",
                "enum": tags,
                "default": tags[0],
            }
        }
        if kind == AGGREGATES:
            address = "{partition}:agg:{aggregateId}"
            parameters["aggregateId"] = {
                "description": "The aggregate's id (its events' `obj`).",
                "location": "$message.header#/obj",
            }
        else:
            address = f"{{partition}}:{kind}"
        listed = self.handled.get((subsystem, Kind.EVENTS if kind == AGGREGATES else kind), ())
        names = sorted(self.types[cls].name for cls in listed)
        names += _extra_messages(kind, typed=bool(names))
        who = "; ".join(
            f"{role} by {', '.join(sorted(by))}" for role, by in sorted(self.roles[stream].items())
        )
        return {
            "address": address,
            "title": f"{subsystem}/{kind}",
            "description": f"{ABOUT_KIND[kind]} In this app: {who}.",
            "messages": {
                self.keys[n]: {"$ref": f"#/components/messages/{self.keys[n]}"} for n in names
            },
            "parameters": parameters,
            "tags": [{"name": subsystem}],
            "x-streamcqrs": {"subsystem": subsystem, "kind": kind, "partitions": keys.partitions},
        }

    def operations(self) -> JsonObject:
        """A receive per handler, a send per output stream, the bots' dead letters; by id."""
        ops: JsonObject = {}

        def add(op_id: str, action: str, stream: Stream, text: str, **fields: Any) -> None:
            cid = self.channel_ids[stream]
            keys = fields.pop("keys", None)
            if keys is None:  # every message the stream is known to carry
                keys = list(self.channels[cid]["messages"])
            ops[_free(op_id, ops)] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{cid}"},
                "description": text,
                "messages": [{"$ref": f"#/channels/{cid}/messages/{key}"} for key in keys],
                **fields,
            }

        handler_ids = _unique(
            {n: _ident(spec.name.rsplit(".", 1)[-1]) for n, spec in enumerate(self.app.handlers)}
        )
        for n, spec in enumerate(self.app.handlers):
            hid = handler_ids[n]
            common: JsonObject = {"title": spec.name, "tags": [{"name": spec.source.subsystem}]}
            summary = _summary(inspect.getdoc(spec.fn))
            if summary:
                common["summary"] = summary
            mine = sorted(self.keys[self.types[cls].name] for cls in spec.message_types)
            extension = {"handler": spec.name, "concern": spec.concern}
            source = (spec.source.subsystem, spec.source.kind.value)
            add(f"{hid}_receive", "receive", source, _declared(spec), keys=mine,
                **common, **{"x-streamcqrs": extension})  # fmt: skip
            for ref in sorted(spec.writes):
                stream = (ref.subsystem, ref.kind.value)
                when = (
                    "beside the commit that acks its input (a snapshot is a cache)"
                    if ref.kind is Kind.SNAPSHOTS
                    else "in the commit that acks its input"
                )
                text = (
                    f"{spec.name} puts into {ref} (declared in `writes`), {when}. The app "
                    "declares the stream, not the types: the messages listed are the ones the "
                    "stream is known to carry."
                )
                add(f"{hid}_put_{self.channel_ids[stream]}", "send", stream, text, **common)
            for sub in sorted(spec.appends):
                for stream, where in (
                    ((sub, Kind.EVENTS.value), f"{sub}/events, which bots consume"),
                    ((sub, AGGREGATES), "the aggregate's own stream, under a version check"),
                ):
                    text = (
                        f"{spec.name} appends events to aggregates of {sub} (declared in "
                        f"`appends`); each goes to {where}, in the commit that acks its input."
                    )
                    add(f"{hid}_append_{self.channel_ids[stream]}", "send", stream, text, **common)
        for sub in sorted({spec.source.subsystem for spec in self.app.handlers}):
            stream = (sub, Kind.DEAD_LETTERS.value)
            text = (
                f"The bots running this app's handlers of {sub} streams put here what they "
                "could not handle: bad input at once, a failing record after its last attempt."
            )
            add(f"bots_put_{self.channel_ids[stream]}", "send", stream, text,
                title=f"dead letters of {sub}", tags=[{"name": sub}])  # fmt: skip
        return dict(sorted(ops.items()))


def _streams(app: App) -> dict[Stream, dict[str, set[str]]]:
    """Every stream the app touches, with who does what to it (role -> handler names)."""
    found: dict[Stream, dict[str, set[str]]] = {}

    def note(subsystem: str, kind: str, role: str, who: str) -> None:
        found.setdefault((subsystem, kind), {}).setdefault(role, set()).add(who)

    for spec in app.handlers:
        note(spec.source.subsystem, spec.source.kind.value, "consumed", spec.name)
        note(spec.source.subsystem, Kind.DEAD_LETTERS.value, "written", "the bots")
        for ref in spec.writes:
            note(ref.subsystem, ref.kind.value, "written", spec.name)
        for ref in spec.reads:
            note(ref.subsystem, ref.kind.value, "read", spec.name)
        for subsystem in spec.appends:
            note(subsystem, Kind.EVENTS.value, "appended to", spec.name)
            note(subsystem, AGGREGATES, "appended to", spec.name)
    return found


def _handled(app: App) -> dict[Stream, set[type[Message]]]:
    """The message types the app's handlers consume from each stream."""
    out: dict[Stream, set[type[Message]]] = {}
    for spec in app.handlers:
        stream = (spec.source.subsystem, spec.source.kind.value)
        out.setdefault(stream, set()).update(spec.message_types)
    return out


def _schemas(
    classes: Sequence[type[Message]],
) -> tuple[dict[type[Message], JsonObject], JsonObject]:
    """Each class's payload schema (a $ref) and every definition, for components/schemas."""
    if not classes:
        return {}, {}
    refs, definitions = models_json_schema(
        [(cls, "validation") for cls in classes],
        ref_template="#/components/schemas/{model}",
        schema_generator=Draft7Schema,
    )
    payloads = {cls: refs[(cls, "validation")] for cls in classes}
    return payloads, dict(definitions.get("$defs", {}))


def _headers(type_schema: JsonObject, fmt: str) -> JsonObject:
    return {
        "allOf": [
            {"$ref": f"#/components/schemas/{ENVELOPE}"},
            {"properties": {**type_schema, "fmt": {"const": fmt}}},
        ]
    }


def _summary(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


def _message(kind: MessageType, payload: JsonObject) -> JsonObject:
    doc = inspect.getdoc(kind.cls) or ""
    stored = (
        f"Stored as type `{kind.name}`, schema version {kind.version}: `data` is msgpack of "
        "the payload."
    )
    return {
        "name": kind.name,
        "title": kind.cls.__name__,
        "summary": _summary(doc) or f"The {kind.name} message.",
        "description": f"{doc}\n\n{stored}" if doc else stored,
        "headers": _headers(
            {"type": {"const": kind.name}, "schema": {"const": str(kind.version)}}, "m"
        ),
        "payload": payload,
        "correlationId": {"location": "$message.header#/corr"},
    }


def _untyped_messages() -> dict[str, JsonObject]:
    """The messages of entries whose shape the app's declarations do not give."""
    corr = {"location": "$message.header#/corr"}
    return {
        VIEW: {
            "name": VIEW,
            "title": "View",
            "summary": "JSON a projection wrote for a UI.",
            "description": "The app declares no model for views, so no schema is given: the "
            "payload is whatever JSON the projection put, under the type name it chose.",
            "contentType": "application/json",
            "headers": _headers({}, "j"),
            "payload": {"description": "Any JSON value."},
            "correlationId": corr,
        },
        SNAPSHOT: {
            "name": SNAPSHOT,
            "title": "Snapshot",
            "summary": "An aggregate's state at a version.",
            "description": "Type `snapshot:<aggregate class>`. Which aggregates are "
            "snapshotted is not declared, so `state` has no schema here.",
            "contentType": "application/json",
            "headers": _headers({"type": {"type": "string", "pattern": "^snapshot:"}}, "j"),
            "payload": {
                "type": "object",
                "required": ["state", "entry"],
                "properties": {
                    "state": {"type": "object", "description": "The aggregate, as JSON."},
                    "entry": {
                        "type": "string",
                        "description": "The aggregate-stream entry id of the last event "
                        "folded into `state`.",
                    },
                },
            },
        },
        UNTYPED: {
            "name": UNTYPED,
            "title": "Untyped",
            "summary": "A registered message this app does not consume from this stream.",
            "description": "The app declares the streams a handler writes, not the types it "
            "writes there; no handler of the app consumes this stream, so its types are not "
            "known here.",
            "headers": _headers({}, "m"),
            "payload": {"description": "msgpack of a registered model."},
            "correlationId": corr,
        },
    }


def _extra_messages(kind: str, *, typed: bool) -> list[str]:
    """Messages a stream of ``kind`` carries besides the types the app consumes from it."""
    if kind == Kind.VIEWS:
        return [VIEW]
    if kind == Kind.SNAPSHOTS:
        return [SNAPSHOT]
    if kind == Kind.DEAD_LETTERS:
        return [DEAD_LETTER]
    return [] if typed else [UNTYPED]


def _declared(spec: HandlerSpec) -> str:
    def listed(items: Iterable[object]) -> str:
        return ", ".join(sorted(str(i) for i in items)) or "nothing"

    return (
        f"{spec.name} consumes {spec.source} as consumer group `{spec.concern}` (one group "
        "per concern on each partition's stream; each entry is handled once per concern, at "
        "least once). It declares writes: "
        f"{listed(spec.writes)}; appends to aggregates of: {listed(spec.appends)}; reads: "
        f"{listed(spec.reads)}."
    )


def _ident(text: str, bad: str = r"[^A-Za-z0-9_-]") -> str:
    """``text`` with every character AsyncAPI tools may choke on in a key replaced by ``_``."""
    return re.sub(bad, "_", text) or "_"


def _free(candidate: str, taken: Iterable[str]) -> str:
    used = set(taken)
    name, n = candidate, 1
    while name in used:
        n += 1
        name = f"{candidate}_{n}"
    return name


def _unique(wanted: dict[Any, str]) -> dict[Any, str]:
    """Give each item its wanted id, numbering the later ones of ids wanted twice."""
    out: dict[Any, str] = {}
    for item, candidate in wanted.items():
        out[item] = _free(candidate, out.values())
    return out


def _server(url: str) -> JsonObject:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"server URL {url!r} is not one streamcqrs connects to; give redis://host:port/db, "
            "rediss://host:port/db or unix:///path/to.sock"
        )
    server: JsonObject = {"protocol": parts.scheme}
    if parts.scheme == "unix":
        server |= {"host": "localhost", "pathname": parts.path}
    else:
        host = parts.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host
        server["host"] = f"{host}:{parts.port}" if parts.port else host
        if parts.path not in ("", "/"):
            server["pathname"] = parts.path
    server["description"] = "Redis or Valkey; the URL's credentials and options are left out."
    return server


__all__ = ["Draft7Schema", "asyncapi_document"]
