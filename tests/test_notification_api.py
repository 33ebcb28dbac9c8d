"""The notification API over a real server (no bots): raw views, ids, idempotency, bad input.

The API runs in this process through Starlette's TestClient (which runs its lifespan, so it
connects to the server as it would under uvicorn).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.notification.api import create_api
from examples.notification.messages import SendNotification
from streamcqrs.streams import Record, Subsystem
from tests.support import async_client, sync_client


@pytest.fixture
def api(real_url: str) -> Iterator[TestClient]:
    """The API on a flushed real server."""
    with sync_client(real_url) as admin:
        admin.flushall()
    with TestClient(create_api(real_url), raise_server_exceptions=False) as client:
        yield client


def client_ops(url: str) -> list[Record]:
    """Everything in notification/client-ops."""
    with sync_client(url) as sync:
        sub = Subsystem("notification", async_client(url), sync_client=sync)
        return asyncio.run(sub.reader("client-ops").read())


def put_view(url: str, nid: str, raw: bytes, tags: dict[str, str]) -> None:
    """Store a view's bytes as the projection would."""
    with sync_client(url) as sync:
        sub = Subsystem("notification", async_client(url), sync_client=sync)
        sub.sync_writer("views").put_view(nid, raw, type_name="notification.NotificationView",
                                         tags=tags)  # fmt: skip


def test_post_puts_one_operation_under_a_fresh_tracking_id(api: TestClient, real_url: str) -> None:
    """POST answers 202 with a tracking id; the operation is in client-ops under that id,
    carrying the recipient and content."""
    first = api.post("/notifications", json={"recipient": "alice", "subject": "Hi", "body": "b"})
    second = api.post("/notifications", json={"recipient": "bob", "subject": "Yo"})
    assert (202, 202) == (first.status_code, second.status_code)
    ids = [first.json()["id"], second.json()["id"]]
    assert ["1", "2"] == ids
    ops = [r.message for r in client_ops(real_url)]
    assert [
        SendNotification(notification_id="1", recipient="alice", subject="Hi", body="b"),
        SendNotification(notification_id="2", recipient="bob", subject="Yo", body=""),
    ] == ops
    assert ["1", "2"] == [r.object_id for r in client_ops(real_url)]


def test_same_idempotency_key_gives_the_first_id_and_one_operation(
    api: TestClient, real_url: str
) -> None:
    """A request retried with the same Idempotency-Key header (or body field) gets the first
    request's tracking id back and puts no second operation; another key is another one."""
    body = {"recipient": "alice", "subject": "Hi", "body": "b"}
    first = api.post("/notifications", json=body, headers={"Idempotency-Key": "abc"})
    again = api.post("/notifications", json=body, headers={"Idempotency-Key": "abc"})
    in_body = api.post("/notifications", json={**body, "idempotency_key": "abc"})
    other = api.post("/notifications", json=body, headers={"Idempotency-Key": "xyz"})
    ids = [r.json()["id"] for r in (first, again, in_body, other)]
    assert ids[0] == ids[1] == ids[2]
    assert ids[3] != ids[0]
    ops = client_ops(real_url)
    assert [ids[0], ids[3]] == [r.object_id for r in ops]


def test_view_is_returned_as_stored(api: TestClient, real_url: str) -> None:
    """GET /notifications/{id} answers the stored JSON bytes unchanged (spacing, key order),
    as application/json."""
    raw = b'{"status":  "sent", "id": "41",\n "version": 3}'
    put_view(real_url, "41", raw, {"email": "ann@example.com"})
    reply = api.get("/notifications/41")
    assert (200, raw) == (reply.status_code, reply.content)
    assert "application/json" == reply.headers["content-type"]


def test_listing_by_email_is_newest_first(api: TestClient, real_url: str) -> None:
    """GET /notifications?email= answers the views tagged with that address, newest id first,
    as one JSON array of the stored bytes; other addresses' views are not in it."""
    put_view(real_url, "9", b'{"id":"9"}', {"email": "ann@example.com"})
    put_view(real_url, "10", b'{"id":"10"}', {"email": "ann@example.com"})
    put_view(real_url, "11", b'{"id":"11"}', {"email": "bob@example.com"})
    put_view(real_url, "9", b'{"id":"9","v":2}', {"email": "ann@example.com"})
    reply = api.get("/notifications", params={"email": "ann@example.com"})
    assert 200 == reply.status_code
    assert b'[{"id":"10"},{"id":"9","v":2}]' == reply.content
    none = api.get("/notifications", params={"email": "nobody@example.com"})
    assert (200, []) == (none.status_code, none.json())


def test_unknown_ids_answer_404_with_a_clear_body(api: TestClient) -> None:
    """An id with no notification answers 404 naming the id, for the view and the events."""
    for path in ("/notifications/999", "/notifications/999/events"):
        reply = api.get(path)
        assert 404 == reply.status_code
        assert "no notification with id '999'" in reply.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("post", "/notifications", {"json": {"subject": "no recipient"}}),
        ("post", "/notifications", {"json": {"recipient": "a", "subject": ""}}),
        ("post", "/notifications", {"json": {"recipient": "a", "subject": "s", "x": 1}}),
        ("post", "/notifications", {"json": {"recipient": "a", "subject": "s" * 501}}),
        (
            "post",
            "/notifications",
            {"json": {"recipient": "a", "subject": "s", "deadline_seconds": -1}},
        ),
        ("post", "/notifications", {"json": ["recipient", "a"]}),
        (
            "post",
            "/notifications",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
        ),
        (
            "post",
            "/notifications",
            {"content": b"\xff\xfe\x00", "headers": {"content-type": "application/json"}},
        ),
        ("get", "/notifications/abc", {}),
        ("get", "/notifications/-1/events", {}),
        ("get", "/notifications/" + "9" * 30, {}),
        ("get", "/notifications", {}),
        ("get", "/notifications", {"params": {"email": "not-an-address"}}),
        ("get", "/notifications", {"params": {"email": "a@b.c", "limit": 0}}),
    ],
)
def test_bad_input_answers_422(api: TestClient, method: str, path: str, kwargs: dict) -> None:  # type: ignore[type-arg]
    """Malformed bodies, ids, queries answer 422 with FastAPI's description of what is wrong."""
    reply = getattr(api, method)(path, **kwargs)
    assert 422 == reply.status_code
    assert "detail" in reply.json()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    segment=st.text(min_size=1, max_size=40).filter(lambda s: s not in (".", "..")),
    email=st.text(max_size=60),
    body=st.dictionaries(st.text(max_size=12), st.one_of(st.none(), st.integers(),
                         st.text(max_size=30), st.floats(allow_nan=False, allow_infinity=False))),
)  # fmt: skip
def test_arbitrary_input_never_answers_500(
    api: TestClient,
    segment: str,
    email: str,
    body: dict,  # type: ignore[type-arg]
) -> None:
    """Whatever the id, the email query or the JSON body, the API answers 2xx, 404 or 422."""
    quoted = quote(segment, safe="")
    replies = [
        api.get(f"/notifications/{quoted}"),
        api.get(f"/notifications/{quoted}/events"),
        api.get("/notifications", params={"email": email}),
        api.post("/notifications", json=body),
    ]
    assert all(r.status_code in (200, 202, 404, 405, 422) for r in replies), [
        (r.request.url, r.status_code, r.text) for r in replies if r.status_code >= 500
    ]


def test_status_of_a_request_and_of_an_unknown_id(api: TestClient) -> None:
    """GET /notifications/{id}/status answers the client protocol's status of a request
    (Available, no concern has read it yet: no bot runs here); an id never handed out is 404."""
    posted = api.post("/notifications", json={"recipient": "alice", "subject": "Hi"})
    tracking_id = posted.json()["id"]
    reply = api.get(f"/notifications/{tracking_id}/status")
    assert 200 == reply.status_code
    assert {
        "tracking_id": int(tracking_id), "found": True, "state": "Available",
        "dead_letter": False, "concerns": {},
    } == reply.json()  # fmt: skip
    assert 404 == api.get("/notifications/999/status").status_code
