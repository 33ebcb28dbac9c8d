"""AsyncAPI documents: valid AsyncAPI 3.0.0, and saying what the app's handlers declared.

Generation reads declarations only, so no server is needed. The official AsyncAPI 3.0.0 JSON
schema is vendored in ``tests/data/asyncapi`` (see its README). It checks the shape of a
document; ``spec_rule_breaks`` checks the rules of the specification it cannot express (every
``$ref`` resolves, an operation's messages are its channel's, an address's parameters are
declared). Payloads are checked the way a reader in another language would: the entry fields
``streams.envelope`` writes, validated against the document's headers and payload schemas.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import msgpack
import pytest
import yaml
from jsonschema import Draft7Validator
from pydantic import BaseModel, Field, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT7

from examples.notification import messages as m
from examples.notification.app import app as notification_app
from streamcqrs.__main__ import main as streamcqrs
from streamcqrs.domain import Event, Message, Operation, TypeRegistry, message
from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers import App, Context
from streamcqrs.handlers.asyncapi import asyncapi_document
from streamcqrs.handlers.saga import SagaDeadline
from streamcqrs.streams.envelope import encode
from streamcqrs.streams.keys import Kind, SubsystemKeys

Doc = dict[str, Any]
SCHEMA = json.loads((Path(__file__).parent / "data" / "asyncapi" / "3.0.0.json").read_text())
OFFICIAL = Draft7Validator(SCHEMA, format_checker=Draft7Validator.FORMAT_CHECKER)
DOC_URI = "urn:test:asyncapi-document"
SENT = "slack.SlackMessageSent"
NOT_DRAFT_07 = {"prefixItems", "$defs", "unevaluatedProperties", "dependentSchemas", "$anchor",
                "$dynamicRef", "$dynamicAnchor", "dependentRequired"}  # fmt: skip


def schema_errors(doc: Doc) -> list[str]:
    """What the official AsyncAPI 3.0.0 JSON schema finds wrong with ``doc``."""
    found = OFFICIAL.iter_errors(doc)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in found]


def resolve(doc: Doc, ref: str) -> Any:
    """The part of ``doc`` a local ``$ref`` points at; KeyError if none."""
    assert ref.startswith("#/"), ref
    found: Any = doc
    for token in ref[2:].split("/"):
        found = found[token.replace("~1", "/").replace("~0", "~")]
    return found


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` value anywhere under ``node``."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def spec_rule_breaks(doc: Doc) -> list[str]:
    """Rules of the AsyncAPI 3.0.0 text that its JSON schema does not check."""
    breaks = []
    for ref in refs(doc):
        try:
            resolve(doc, ref)
        except (KeyError, TypeError):
            breaks.append(f"dangling $ref {ref}")
    for op_id, op in doc.get("operations", {}).items():
        channel = op["channel"]["$ref"]
        if not re.fullmatch(r"#/channels/[^/]+", channel):
            breaks.append(f"operation {op_id} points at {channel}, not a root channel")
        for each in op.get("messages", []):
            if not each["$ref"].startswith(f"{channel}/messages/"):
                breaks.append(f"operation {op_id} lists {each['$ref']}, not of its channel")
    for cid, channel in doc.get("channels", {}).items():
        used = set(re.findall(r"{([^}]*)}", channel.get("address") or ""))
        declared = set(channel.get("parameters", {}))
        if used != declared:
            breaks.append(f"channel {cid} uses parameters {used}, declares {declared}")
        breaks += [f"bad parameter name {p}" for p in declared if not re.fullmatch(r"[\w-]+", p)]
    for section in doc.get("components", {}).values():
        breaks += [f"bad key {k}" for k in section if not re.fullmatch(r"[a-zA-Z0-9.\-_]+", k)]
    return breaks


def validator(doc: Doc, pointer: str) -> Draft7Validator:
    """A draft-07 validator for the schema at ``pointer`` in ``doc``, its $refs resolved there."""
    registry: Registry[Any] = Registry().with_resource(DOC_URI, DRAFT7.create_resource(doc))
    return Draft7Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=registry)


def problems(doc: Doc, pointer: str, instance: Any) -> list[str]:
    """Why ``instance`` does not fit the schema at ``pointer`` (empty: it fits)."""
    return [e.message for e in validator(doc, pointer).iter_errors(instance)]


def entry_of(msg: Message, **options: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """The entry streamcqrs would XADD for ``msg``: its fields but data, and data unpacked."""
    flat = encode(msg, **options).fields()
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    data = fields.pop("data")
    assert isinstance(data, bytes)
    headers = {
        str(name): value.decode("latin-1") if isinstance(value, bytes) else str(value)
        for name, value in fields.items()
    }
    return headers, msgpack.unpackb(data)


def channel_of(doc: Doc, subsystem: str, kind: str) -> str:
    """The id of the channel of stream ``subsystem/kind``."""
    found = [
        cid
        for cid, channel in doc["channels"].items()
        if channel["x-streamcqrs"]["subsystem"] == subsystem
        and channel["x-streamcqrs"]["kind"] == kind
    ]
    assert 1 == len(found), f"{subsystem}/{kind}: {found}"
    return found[0]


def message_names(doc: Doc, listed: list[dict[str, str]]) -> list[str]:
    """The registered names of the messages a list of $refs points at."""
    return sorted(resolve(doc, resolve(doc, each["$ref"])["$ref"])["name"] for each in listed)


@pytest.fixture(scope="module")
def document() -> Doc:
    """The notification example's document."""
    return asyncapi_document(notification_app)


class TestValidity:
    """The document is AsyncAPI 3.0.0, and the check can tell when one is not."""

    def test_the_notification_example_document_validates(self, document: Doc) -> None:
        """The example's document passes the official schema and the specification's rules."""
        assert "3.0.0" == document["asyncapi"]
        assert [] == schema_errors(document)
        assert [] == spec_rule_breaks(document)

    @pytest.mark.parametrize(
        ("what", "check", "damage"),
        [
            ("no version", schema_errors, lambda d: d["info"].pop("version")),
            ("an unknown action", schema_errors, lambda d: d["operations"]
             ["send_email_receive"].update(action="consume")),
            ("a payload schema with a bad type", schema_errors, lambda d: d["components"]
             ["schemas"]["SendEmail"]["properties"]["to"].update(type="text")),
            ("a channel that is not an object", schema_errors, lambda d: d["channels"].update(
                x=3)),
            ("a dangling message", spec_rule_breaks, lambda d: d["components"]["messages"].pop(
                "email.SendEmail")),
            ("an undeclared parameter", spec_rule_breaks, lambda d: d["channels"]
             ["email_events"].update(address="{partition}:{who}:events")),
            ("a message of another channel", spec_rule_breaks, lambda d: d["operations"]
             ["send_email_receive"]["messages"].append(
                 {"$ref": f"#/channels/slack_events/messages/{SENT}"})),
        ],
    )  # fmt: skip
    def test_a_broken_document_fails_the_check(
        self,
        document: Doc,
        what: str,
        check: Callable[[Doc], list[str]],
        damage: Callable[[Doc], object],
    ) -> None:
        """A document broken against the schema or the specification's rules is reported."""
        broken = json.loads(json.dumps(document))
        damage(broken)
        assert [] == check(document)
        assert [] != check(broken), what

    def test_the_document_is_plain_json_and_the_same_every_time(self, document: Doc) -> None:
        """Two generations are equal, survive JSON as they are, and list names sorted."""
        again = asyncapi_document(notification_app)
        assert json.dumps(document) == json.dumps(again)
        assert document == json.loads(json.dumps(document))
        for section in (document["channels"], document["operations"]):
            assert sorted(section) == list(section)


class TestDeclarations:
    """Every handler's streams, operations and messages are in the document."""

    def test_every_handler_has_its_channels_operations_and_messages(self, document: Doc) -> None:
        """A receive on its input with its types; a send per stream it writes or appends to."""
        ops = document["operations"]
        for spec in notification_app.handlers:
            mine = {(op["action"], op["channel"]["$ref"]): op for op in ops.values()
                    if op.get("title") == spec.name}  # fmt: skip
            source = channel_of(document, spec.source.subsystem, spec.source.kind)
            receive = mine[("receive", f"#/channels/{source}")]
            assert spec.concern == receive["x-streamcqrs"]["concern"]
            registered = sorted(notification_app.types.of_class(c).name for c in spec.message_types)
            assert registered == message_names(document, receive["messages"])
            outputs = {(ref.subsystem, ref.kind.value) for ref in spec.writes}
            for sub in spec.appends:
                outputs |= {(sub, "events"), (sub, "aggregates")}
            sends = {ref for action, ref in mine if action == "send"}
            expected = {f"#/channels/{channel_of(document, *stream)}" for stream in outputs}
            assert expected == sends, spec.name

    def test_every_consumed_subsystem_has_its_dead_letters(self, document: Doc) -> None:
        """The bots' dead letters of each consumed subsystem are a channel and a send."""
        for sub in ("email", "notification", "slack"):
            cid = channel_of(document, sub, "dead")
            op = document["operations"][f"bots_put_{cid}"]
            assert ["streamcqrs.DeadLetter"] == message_names(document, op["messages"])

    def test_views_and_snapshots_are_json_without_an_invented_schema(self, document: Doc) -> None:
        """Views and snapshots have no declared model: JSON, and no schema pretends one."""
        views = document["channels"][channel_of(document, "notification", "views")]
        snapshots = document["channels"][channel_of(document, "notification", "snapshots")]
        view = resolve(document, next(iter(views["messages"].values()))["$ref"])
        snapshot = resolve(document, next(iter(snapshots["messages"].values()))["$ref"])
        assert ("application/json", "application/json") == (
            view["contentType"],
            snapshot["contentType"],
        )
        assert [] == problems(document, "/components/messages/streamcqrs.View/payload", [1, "x"])
        assert [] != problems(
            document, "/components/messages/streamcqrs.Snapshot/payload", {"state": {}}
        )

    def test_a_partition_parameter_gives_every_key_of_the_stream(self) -> None:
        """Filling in each partition's tag (and an aggregate id) gives the keys bots use."""
        types = TypeRegistry()
        message("shop.Ordered", into=types)(Ordered)
        app = App("shop", types=types)
        app.subsystem("shop", partitions=3)
        app.handler(Ordered, stream="shop/events", appends=["shop"])(take)
        doc = asyncapi_document(app)
        keys = SubsystemKeys("shop", 3)
        events = doc["channels"][channel_of(doc, "shop", "events")]
        aggregates = doc["channels"][channel_of(doc, "shop", "aggregates")]
        tags = events["parameters"]["partition"]["enum"]
        assert [keys.partition(p).stream(Kind.EVENTS) for p in range(3)] == [
            events["address"].replace("{partition}", tag) for tag in tags
        ]
        assert [keys.partition(p).aggregate("o-1") for p in range(3)] == [
            aggregates["address"].replace("{partition}", tag).replace("{aggregateId}", "o-1")
            for tag in aggregates["parameters"]["partition"]["enum"]
        ]
        assert [] == schema_errors(doc)
        assert [] == spec_rule_breaks(doc)


EXAMPLES: list[Message] = [
    m.SendNotification(
        notification_id="n-1", recipient="ada", subject="Hi", body="Hello", deadline_seconds=30
    ),
    m.NotificationRequested(
        notification_id="n-1",
        recipient="ada",
        subject="Hi",
        body="Hello",
        channels=("email", "slack"),
        at_ms=1,
    ),
    m.NotificationFailed(
        notification_id="n-1",
        reason="timeout",
        failed={"email": "refused"},
        missing=("slack",),
        at_ms=2,
    ),
    SagaDeadline(saga="notification-saga", saga_id="n-1.saga"),
    m.SendEmail(delivery_id="d-1", to="ada@example.com", subject="Hi", body="Hello"),
    m.SlackMessageFailed(
        delivery_id="d-2", operation_id="op-2", channel="#ops", error="429", at_ms=4
    ),
]


class TestPayloads:
    """An entry made from a model fits its message in the document; a wrong one does not."""

    @pytest.mark.parametrize("msg", EXAMPLES, ids=lambda msg: type(msg).__name__)
    def test_an_entry_made_from_the_model_fits_its_message(
        self, document: Doc, msg: Message
    ) -> None:
        """The fields streamcqrs writes fit the headers; the unpacked data fits the payload."""
        name = notification_app.types.of_class(type(msg)).name
        headers, payload = entry_of(msg, object_id="n-1", tags=(("recipient", "ada"),))
        assert [] == problems(document, f"/components/messages/{name}/headers", headers)
        assert [] == problems(document, f"/components/messages/{name}/payload", payload)

    @pytest.mark.parametrize(
        ("model", "payload"),
        [
            (m.SendNotification, {"notification_id": "n-1", "recipient": "ada", "subject": "Hi"}),
            (m.SendNotification, {"notification_id": "", "recipient": "a", "subject": "s",
                                  "body": ""}),
            (m.NotificationFailed, {"notification_id": "n-1", "reason": "bored", "at_ms": 1}),
            (SagaDeadline, {"saga": "notification-saga"}),
            (m.SendEmail, {"delivery_id": "d", "to": "t", "subject": "s", "body": "b",
                           "extra": 1}),
        ],
    )  # fmt: skip
    def test_a_payload_the_model_refuses_its_schema_refuses(
        self, document: Doc, model: type[Message], payload: dict[str, Any]
    ) -> None:
        """Missing fields, broken limits, unknown literals and extra keys fail both ways."""
        name = notification_app.types.of_class(model).name
        with pytest.raises(ValidationError):
            model.model_validate(payload)
        assert [] != problems(document, f"/components/messages/{name}/payload", payload)

    def test_headers_of_another_type_do_not_fit(self, document: Doc) -> None:
        """The headers pin the type name and schema version a producer must write."""
        headers, _ = entry_of(EXAMPLES[0])
        assert [] != problems(document, "/components/messages/email.SendEmail/headers", headers)


# -- a private app whose models use what draft 07 spells differently ------------------------


class Ordered(Event):
    """An order was placed."""

    order_id: str


def take(event: Message, ctx: Context) -> None:
    """Take an order."""


def _item_with_size() -> type[BaseModel]:
    class Item(BaseModel):
        size: int

    return Item


def _item_with_label() -> type[BaseModel]:
    class Item(BaseModel):
        label: str

    return Item


SizedItem, LabelledItem = _item_with_size(), _item_with_label()


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Shapes(Operation):
    """Every shape pydantic writes in 2020-12 terms."""

    pair: tuple[str, int]
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    first: SizedItem
    second: LabelledItem


@pytest.fixture(scope="module")
def shapes() -> Doc:
    """The document of an app with one handler of Shapes, declared twice (two concerns)."""
    types = TypeRegistry()
    message("zoo.Shapes", into=types)(Shapes)
    app = App("zoo", types=types)
    app.handler(Shapes, stream="zoo/client-ops", concern="one", writes=["zoo/internal-ops"])(take)
    app.handler(Shapes, stream="zoo/client-ops", concern="two")(take)
    return asyncapi_document(app)


GOOD = {"pair": ["a", 1], "pet": {"kind": "cat", "lives": 9},
        "first": {"size": 1}, "second": {"label": "x"}}  # fmt: skip


class TestDraft07:
    """Payload schemas use draft 07, the JSON Schema AsyncAPI's Schema Object extends."""

    def test_the_document_validates_and_has_no_2020_12_keyword(self, shapes: Doc) -> None:
        """Tuples, tagged unions and same-named models give a valid, draft-07 document."""
        assert [] == schema_errors(shapes)
        assert [] == spec_rule_breaks(shapes)
        keys: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                keys.update(node)
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(shapes["components"]["schemas"])
        assert set() == keys & NOT_DRAFT_07
        assert [] == problems(shapes, "/components/messages/zoo.Shapes/payload", GOOD)
        Shapes.model_validate(GOOD)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("pair", ["a", "b"]),
            ("pair", ["a", 1, 2]),
            ("pet", {"kind": "cat", "good": True}),
            ("first", {"label": "x"}),
            ("second", {"size": 1}),
        ],
    )
    def test_a_wrong_value_fails_under_draft_07_as_in_pydantic(
        self, shapes: Doc, field: str, value: Any
    ) -> None:
        """Each value pydantic refuses, a draft-07 validator refuses too."""
        wrong = {**GOOD, field: value}
        with pytest.raises(ValidationError):
            Shapes.model_validate(wrong)
        assert [] != problems(shapes, "/components/messages/zoo.Shapes/payload", wrong)

    def test_one_function_declared_twice_gets_two_operations(self, shapes: Doc) -> None:
        """Two handlers of one name stay two receive operations, one per concern."""
        concerns = sorted(
            op["x-streamcqrs"]["concern"]
            for op in shapes["operations"].values()
            if op["action"] == "receive"
        )
        assert ["one", "two"] == concerns

    def test_a_stream_nobody_consumes_says_its_types_are_unknown(self, shapes: Doc) -> None:
        """What a handler writes to a stream no handler reads is an open, untyped message."""
        internal = shapes["channels"][channel_of(shapes, "zoo", "internal-ops")]
        assert ["streamcqrs.Untyped"] == sorted(internal["messages"])


# -- the command and the server ------------------------------------------------------------


class TestCommand:
    """``asyncapi MODULE:APP`` writes the document; a wrong app is named with a fix."""

    APP = "examples.notification.app:app"

    def test_it_writes_json_to_stdout_or_a_file(self, document: Doc, tmp_path: Path) -> None:
        """Stdout and --output FILE both carry the same document as the function."""
        out = io.StringIO()
        assert 0 == streamcqrs(["asyncapi", self.APP], out=out)
        assert document == json.loads(out.getvalue())
        target = tmp_path / "asyncapi.json"
        assert 0 == streamcqrs(["asyncapi", self.APP, "--output", str(target)])
        assert document == json.loads(target.read_text())

    def test_it_writes_yaml_without_anchors(self, document: Doc) -> None:
        """--yaml gives the same document, with no YAML anchors for other tools to trip on."""
        out = io.StringIO()
        assert 0 == streamcqrs(
            ["asyncapi", self.APP, "--yaml", "--title", "Notes", "--api-version", "2.0.0"], out
        )
        assert "&id" not in out.getvalue()
        loaded = yaml.safe_load(out.getvalue())
        assert ("Notes", "2.0.0") == (loaded["info"]["title"], loaded["info"]["version"])
        assert document["channels"] == loaded["channels"]

    @pytest.mark.parametrize(
        ("spec", "said"),
        [
            ("examples.notification.app:nope", "has no attribute 'nope'"),
            ("examples.notification.messages:SendEmail", "not a streamcqrs App"),
            ("examples.nowhere:app", "no module 'examples.nowhere'"),
            ("examples.notification.app", "must be written MODULE:APP"),
        ],
    )
    def test_a_wrong_app_exits_2_saying_what_to_fix(
        self, spec: str, said: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The exit status is 2 and stderr says what was wrong."""
        assert 2 == streamcqrs(["asyncapi", spec], out=io.StringIO())
        assert said in capsys.readouterr().err

    def test_a_server_is_described_without_its_credentials(self) -> None:
        """A server URL's host, port and database are kept; user, password and query are not."""
        url = "redis://u5er:s3cret@cache.internal:6380/2?password=hunter2"
        doc = asyncapi_document(notification_app, server_url=url)
        server = doc["servers"]["redis"]
        assert ("cache.internal:6380", "redis", "/2") == (
            server["host"],
            server["protocol"],
            server["pathname"],
        )
        assert not {"u5er", "s3cret", "hunter2"} & set(re.findall(r"\w+", json.dumps(doc)))
        assert [] == schema_errors(doc)
        with pytest.raises(ConfigurationError, match="redis://host:port/db"):
            asyncapi_document(notification_app, server_url="http://cache:80")
