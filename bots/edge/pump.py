"""A subscription's delivery cursor and lease (``lua/pump.lua``): one sender at a time.

Deliveries to one receiver go out in order, so one sender at a time may deliver to it: the
one holding its lease. The lease lapses by itself (a sender that died), and every move of
the cursor extends it; a sender whose lease lapsed can no longer move the cursor.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import redis.asyncio

from streamcqrs.streams import PartitionKeys
from streamcqrs.streams.envelope import as_str
from streamcqrs.streams.scripts import Script


@cache
def _script() -> Script:
    source = resources.files("streamcqrs.bots.edge").joinpath("lua", "pump.lua").read_text()
    return Script("pump", source)


def pump_key(part: PartitionKeys, sid: str) -> str:
    """The pump hash of subscription ``sid`` (in the partition of its id)."""
    return f"{part.tag}:pump:{sid}"


@dataclass(slots=True)
class PumpState:
    """What the pump hash held when the lease was asked for."""

    taken: bool
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> int:
        """The last queue sequence number delivered or given up (0: none)."""
        return int(self.fields.get("done", "0"))

    def replayed(self, generation: int) -> bool:
        """The replay of this generation is over."""
        return self.fields.get(f"replayed:{generation}") == "1"

    def closed(self, generation: int) -> bool:
        """This generation ended (sent once, or its receiver answered 410)."""
        return self.fields.get(f"closed:{generation}") == "1"

    def replay_cursor(self, generation: int, stream: str) -> str:
        """The last entry of ``stream`` this generation's replay delivered ("" for none)."""
        return self.fields.get(f"replay:{generation}:{stream}", "")


class Pump:
    """The lease and cursor of one subscription, for one handler run (one holder token)."""

    def __init__(
        self, client: redis.asyncio.Redis, part: PartitionKeys, sid: str, *, lease_ms: int
    ) -> None:
        self.client = client
        self.key = pump_key(part, sid)
        self.holder = secrets.token_hex(8)
        self.lease_ms = lease_ms

    async def take(self) -> PumpState:
        """Take the lease if free (or lapsed); the state either way."""
        taken, flat = await _script().run(self.client, [self.key], ["take", self.holder,
                                                                     self.lease_ms])  # fmt: skip
        pairs = [as_str(v) for v in flat]
        return PumpState(bool(taken), dict(zip(pairs[::2], pairs[1::2], strict=True)))

    async def set(self, values: dict[str, str | int]) -> bool:
        """Set fields (``done``, ``replayed:<gen>``...) while holding the lease; False if lost."""
        flat = [str(each) for pair in values.items() for each in pair]
        args = ["set", self.holder, self.lease_ms, *flat]
        return bool(await _script().run(self.client, [self.key], args))

    async def give(self) -> None:
        """Give the lease up."""
        await _script().run(self.client, [self.key], ["give", self.holder, self.lease_ms])


__all__ = ["Pump", "PumpState", "pump_key"]
