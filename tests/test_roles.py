"""Roles: a write-only stream cannot read and a read-only stream cannot write.

Each misuse raises RoleError naming the stream, the role it was handed out in, what was
asked, and what to ask the subsystem for instead; nothing is written or read.
"""

from __future__ import annotations

import pytest

from streamcqrs.streams.errors import RoleError, StreamError
from tests.messages import Ping
from tests.support import Backend, Run

READS = ["read", "latest", "latest_raw", "by_tag", "subscribe", "length"]
WRITES = ["put", "put_view", "next_id"]


@pytest.mark.parametrize("action", READS)
def test_a_write_only_stream_cannot_read(backend: Backend, action: str) -> None:
    """writer(kind).<read method> raises RoleError pointing at reader(kind)."""
    writer = backend.subsystem("orders").writer("client-ops")

    with pytest.raises(RoleError) as refused:
        getattr(writer, action)

    expected = (
        f"orders/client-ops was handed out write-only: it cannot {action}; "
        "ask the subsystem for reader('client-ops') to read"
    )
    assert expected == str(refused.value)


@pytest.mark.parametrize("action", WRITES)
def test_a_read_only_stream_cannot_write(backend: Backend, action: str) -> None:
    """reader(kind).<write method> raises RoleError pointing at writer(kind)."""
    reader = backend.subsystem("orders").reader("views")

    with pytest.raises(RoleError) as refused:
        getattr(reader, action)

    expected = (
        f"orders/views was handed out read-only: it cannot {action}; "
        "ask the subsystem for writer('views') to write"
    )
    assert expected == str(refused.value)


@pytest.mark.parametrize("action", READS)
def test_a_sync_write_only_stream_cannot_read(backend: Backend, action: str) -> None:
    """The sync writer refuses reads with the same RoleError as the async one."""
    writer = backend.subsystem("orders").sync_writer("internal-ops")

    with pytest.raises(RoleError) as refused:
        getattr(writer, action)

    assert (
        f"orders/internal-ops was handed out write-only: it cannot {action}; "
        "ask the subsystem for reader('internal-ops') to read"
    ) == str(refused.value)


def test_a_refused_write_writes_nothing(backend: Backend, run: Run[int]) -> None:
    """A read-only stream asked to put raises before touching the server."""
    sub = backend.subsystem("orders")
    reader = sub.reader("client-ops")

    with pytest.raises(RoleError):
        run(reader.put(Ping(n=1), object_id="o-1"))

    assert 0 == run(reader.length())


def test_role_errors_are_stream_errors_not_attribute_errors(backend: Backend) -> None:
    """RoleError is caught by `except StreamError`; unknown names stay AttributeErrors."""
    writer = backend.subsystem("orders").writer("client-ops")

    with pytest.raises(StreamError):
        writer.read  # noqa: B018 - the attribute access itself is refused
    with pytest.raises(AttributeError):
        writer.no_such_method  # noqa: B018 - the access is what is tested
    assert not issubclass(RoleError, AttributeError)


def test_each_role_keeps_its_own_methods(backend: Backend, run: Run[None]) -> None:
    """The writer puts and hands out ids; the reader of the same stream reads them back."""
    sub = backend.subsystem("orders")
    writer, reader = sub.writer("client-ops"), sub.reader("client-ops")

    async def scenario() -> None:
        tracking = await writer.next_id()
        put = await writer.put(Ping(n=tracking), object_id=tracking)
        latest = await reader.latest(tracking)

        assert latest is not None
        assert (put.entry_id, Ping(n=1)) == (latest.entry_id, latest.message)

    run(scenario())
