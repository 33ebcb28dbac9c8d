"""A retried event keeps its aggregate version: the parked copy and the one put back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamcqrs.streams import Commit, Kind, SubsystemKeys
from streamcqrs.streams.delayed import Delayed
from streamcqrs.streams.envelope import encode, entries, parse
from tests.messages import Opened
from tests.support import Backend


def test_a_retried_event_keeps_its_version(real: Backend, run: Callable[[Any], Any]) -> None:
    """An event (with ``seq``, its aggregate's version) parked for a retry and moved back
    into its stream carries the same ``seq``: a handler reading ``ctx.envelope.seq`` sees
    the same version on every attempt. An envelope without one stays without."""
    part = SubsystemKeys("shop").partition(0)
    with_seq = encode(Opened(owner="a"), object_id="x")
    with_seq.seq = 7
    without = encode(Opened(owner="b"), object_id="y")
    for envelope in (with_seq, without):
        assert envelope.seq == Delayed.unpack(Delayed("events", envelope).pack()).envelope.seq

    async def scene() -> None:
        client = real.client()
        for envelope in (with_seq, without):
            member = Delayed("events", envelope, attempt=2, concern="c").pack()
            park = Commit()
            park.delay(part.delayed(Kind.EVENTS), 0, member)
            await park.run(client)
            move = Commit()
            move.move_due(part, Kind.EVENTS, member)
            await move.run(client)

    run(scene())
    key = part.stream(Kind.EVENTS)
    found = entries(real.sync_client().xrange(key))
    assert [7, None] == [parse(key, eid.decode(), raw).seq for eid, raw in found]
