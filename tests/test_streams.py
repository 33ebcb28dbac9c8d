"""The streams contract: puts, ids, reads by id, time and tag, trimming, views, partitions.

Every test runs on a real server and on the in-memory mode (fakeredis), through the public
``Subsystem`` API; raw client calls only look at what landed where.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import orjson
import pytest
import redis
import redis.asyncio
from redis.crc import key_slot
from redis.typing import EncodableT, FieldT

from streamcqrs.domain import Message, message
from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.streams import (
    Kind,
    OnExisting,
    Record,
    Subsystem,
    SyncWriteOnlyStream,
    partition_of,
)
from streamcqrs.streams.envelope import JSON, encode, entries
from streamcqrs.streams.errors import DuplicateRecord
from tests.messages import Account, Opened, Ping
from tests.support import Backend, Run


@message("test.StreamsView")
class PingView(Message):
    """A UI-shaped view model."""

    n: int
    label: str


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", maxsplit=1)[0])


async def _server_ms(client: redis.asyncio.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def _after_ms(client: redis.asyncio.Redis, ms: int) -> None:
    """Return once the server clock is past ``ms``, so the next entry gets a later id."""
    deadline = time.monotonic() + 2.0
    while await _server_ms(client) <= ms:
        assert time.monotonic() < deadline, "the server clock did not move for 2 s"
        await asyncio.sleep(0.001)


def _numbers(records: list[Record]) -> list[int]:
    return [r.message.n for r in records if isinstance(r.message, Ping)]


class TestOnExisting:
    """What a put does when a record with the same object id is already there."""

    def test_write_adds_another_record_that_becomes_the_latest(
        self, backend: Backend, run: Run[None]
    ) -> None:
        """WRITE writes every time; latest(id) is the newest."""
        sub = backend.subsystem("orders")
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")

        async def scenario() -> None:
            first = await writer.put(Ping(n=1), object_id="o-1")
            second = await writer.put(Ping(n=2), object_id="o-1", on_existing=OnExisting.WRITE)
            latest = await reader.latest("o-1")

            assert (True, True) == (first.written, second.written)
            assert first.entry_id != second.entry_id
            assert 2 == await reader.length()
            assert latest is not None
            assert (second.entry_id, Ping(n=2)) == (latest.entry_id, latest.message)

        run(scenario())

    def test_skip_returns_the_existing_entry_and_writes_nothing(
        self, backend: Backend, run: Run[None]
    ) -> None:
        """SKIP makes a retried put idempotent: the first entry id back, written False."""
        sub = backend.subsystem("orders")
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")

        async def scenario() -> None:
            first = await writer.put(Ping(n=1), object_id="o-1", on_existing=OnExisting.SKIP)
            again = await writer.put(Ping(n=2), object_id="o-1", on_existing=OnExisting.SKIP)
            latest = await reader.latest("o-1")

            assert (first.entry_id, False) == (again.entry_id, again.written)
            assert 1 == await reader.length()
            assert latest is not None
            assert Ping(n=1) == latest.message

        run(scenario())

    def test_raise_refuses_a_second_record_and_writes_nothing(
        self, backend: Backend, run: Run[None]
    ) -> None:
        """RAISE raises DuplicateRecord naming the id and the SKIP alternative."""
        sub = backend.subsystem("orders")
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")

        async def scenario() -> None:
            first = await writer.put(Ping(n=1), object_id="o-1", on_existing=OnExisting.RAISE)
            with pytest.raises(DuplicateRecord) as refused:
                await writer.put(Ping(n=2), object_id="o-1", on_existing=OnExisting.RAISE)
            other = await writer.put(Ping(n=3), object_id="o-2", on_existing=OnExisting.RAISE)

            assert "'o-1'" in str(refused.value)
            assert first.entry_id in str(refused.value)
            assert "OnExisting.SKIP" in str(refused.value)
            assert other.written
            assert [1, 3] == _numbers(await reader.read())

        run(scenario())

    def test_prune_keeps_only_the_newest_records_of_that_id(
        self, backend: Backend, run: Run[None]
    ) -> None:
        """PRUNE with keep=2 leaves the two newest records of the id, others untouched."""
        sub = backend.subsystem("orders")
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")

        async def scenario() -> None:
            await writer.put(Ping(n=0), object_id="other")
            for n in range(1, 6):
                await writer.put(Ping(n=n), object_id="o-1", on_existing=OnExisting.PRUNE, keep=2)

            assert [0, 4, 5] == _numbers(await reader.read())
            latest = await reader.latest("o-1")
            assert latest is not None
            assert Ping(n=5) == latest.message

        run(scenario())

    def test_prune_must_keep_at_least_one(self, backend: Backend, run: Run[None]) -> None:
        """PRUNE with keep=0 would delete the record just written: refused before writing."""
        sub = backend.subsystem("orders")
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")

        async def scenario() -> None:
            with pytest.raises(ConfigurationError):
                await writer.put(Ping(n=1), object_id="o-1", on_existing=OnExisting.PRUNE, keep=0)
            assert 0 == await reader.length()

        run(scenario())

    def test_sync_writer_applies_the_same_strategies(
        self, backend: Backend, run: Run[list[Record]]
    ) -> None:
        """The sync writer SKIPs and RAISEs exactly as the async one does."""
        sub = backend.subsystem("orders")
        writer, reader = sub.sync_writer("client-ops"), sub.reader("client-ops")

        first = writer.put(Ping(n=1), object_id="o-1")
        again = writer.put(Ping(n=2), object_id="o-1", on_existing=OnExisting.SKIP)
        with pytest.raises(DuplicateRecord):
            writer.put(Ping(n=3), object_id="o-1", on_existing=OnExisting.RAISE)

        assert (first.entry_id, False) == (again.entry_id, again.written)
        assert [1] == _numbers(run(reader.read()))


class TestNextId:
    """Tracking ids handed out by a write-only stream."""

    def test_ids_are_unique_and_increasing(self, backend: Backend, run: Run[list[int]]) -> None:
        """Consecutive calls, async then sync, give strictly increasing ids."""
        sub = backend.subsystem("orders")
        writer, sync_writer = sub.writer("client-ops"), sub.sync_writer("client-ops")

        async def take(n: int) -> list[int]:
            return [await writer.next_id() for _ in range(n)]

        ids = run(take(20)) + [sync_writer.next_id() for _ in range(5)]

        assert sorted(set(ids)) == ids
        assert 25 == len(ids)

    def test_ids_stay_unique_under_concurrent_callers(
        self, backend: Backend, run: Run[list[int]]
    ) -> None:
        """200 async tasks over 4 clients plus 4 sync threads never get the same id twice."""
        writers = [backend.subsystem("orders").writer("client-ops") for _ in range(4)]
        sync_writers = [backend.subsystem("orders").sync_writer("client-ops") for _ in range(4)]

        async def many() -> list[int]:
            return list(await asyncio.gather(*(writers[k % 4].next_id() for k in range(200))))

        def take(writer: SyncWriteOnlyStream) -> list[int]:
            return [writer.next_id() for _ in range(25)]

        with ThreadPoolExecutor(4) as pool:
            threads = [pool.submit(take, w) for w in sync_writers]
            ids = run(many())
            for done in threads:
                ids += done.result(timeout=30)

        assert list(range(1, 301)) == sorted(ids)

    def test_each_stream_has_its_own_sequence(self, backend: Backend, run: Run[None]) -> None:
        """Ids of two streams are independent; a partitioned stream still has one sequence."""
        sub = backend.subsystem("orders", partitions=4)

        async def scenario() -> None:
            ops = sub.writer("client-ops")
            internal = sub.writer("internal-ops")
            assert [1, 2, 3] == [await ops.next_id() for _ in range(3)]
            assert 1 == await internal.next_id()

        run(scenario())


class TestReads:
    """Reading back: latest by id, by time range, by tag."""

    def test_latest_is_the_newest_record_of_each_id(self, backend: Backend, run: Run[None]) -> None:
        """latest(id) per id, the int form of an id works, an unknown id gives None."""
        sub = backend.subsystem("orders", partitions=3)
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")

        async def scenario() -> None:
            for n in range(12):
                await writer.put(Ping(n=n), object_id=n % 4)

            for key in range(4):
                latest = await reader.latest(key)
                assert latest is not None
                assert (str(key), Ping(n=8 + key)) == (latest.object_id, latest.message)
            assert None is await reader.latest("nobody")
            assert None is await reader.latest_raw("nobody")

        run(scenario())

    def test_read_by_time_range(self, backend: Backend, run: Run[None]) -> None:
        """read(since, until) returns the records whose entry time is in the closed range."""
        sub = backend.subsystem("orders", partitions=2)
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")
        client = backend.client()

        async def scenario() -> None:
            put_ms = []
            for n in range(4):
                put = await writer.put(Ping(n=n), object_id=f"o-{n}")
                put_ms.append(_ms(put.entry_id))
                await _after_ms(client, put_ms[-1])

            middle = await reader.read(put_ms[1], put_ms[2])
            as_datetimes = await reader.read(
                datetime.fromtimestamp(put_ms[2] / 1000, UTC),
                datetime.fromtimestamp(put_ms[3] / 1000, UTC),
            )

            assert [0, 1, 2, 3] == _numbers(await reader.read())
            assert [1, 2] == _numbers(middle)
            assert [2, 3] == _numbers(as_datetimes)
            assert [2, 3] == _numbers(await reader.read(since=put_ms[2]))
            assert [0, 1] == _numbers(await reader.read(until=put_ms[1]))
            assert [0, 1] == _numbers(await reader.read(count=2))
            assert [] == await reader.read(put_ms[3] + 1)

        run(scenario())

    def test_by_tag_within_a_time_range(self, backend: Backend, run: Run[None]) -> None:
        """by_tag finds records by any of their (repeated) tags, within [since, until]."""
        sub = backend.subsystem("orders", partitions=2)
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")
        client = backend.client()

        async def scenario() -> None:
            put_ms = []
            for n, to in enumerate(["a", "b", "a", "a"]):
                tags = [("to", to), ("to", "all"), ("to", "all")]
                put = await writer.put(Ping(n=n), object_id=f"o-{n}", tags=tags)
                put_ms.append(_ms(put.entry_id))
                await _after_ms(client, put_ms[-1])
            untagged = await writer.put(Ping(n=9), object_id="o-9")

            assert [0, 2, 3] == _numbers(await reader.by_tag("to", "a"))
            assert [1] == _numbers(await reader.by_tag("to", "b"))
            assert [0, 1, 2, 3] == _numbers(await reader.by_tag("to", "all"))
            assert [1, 2] == _numbers(await reader.by_tag("to", "all", put_ms[1], put_ms[2]))
            assert [2, 3] == _numbers(await reader.by_tag("to", "a", since=put_ms[1]))
            assert [0] == _numbers(await reader.by_tag("to", "a", until=put_ms[1]))
            assert [3, 2] == _numbers(await reader.by_tag("to", "a", limit=2, newest_first=True))
            assert [0, 2] == _numbers(await reader.by_tag("to", "a", limit=2))
            assert [] == await reader.by_tag("to", "nobody")
            assert untagged.written
            record = (await reader.by_tag("to", "b"))[0]
            assert (("to", "b"), ("to", "all"), ("to", "all")) == record.envelope.tags

        run(scenario())


class TestTrim:
    """Trimming a stream by length and by age."""

    def test_trim_by_max_length_keeps_the_newest(self, backend: Backend, run: Run[None]) -> None:
        """trim(maxlen=2) drops the oldest entries; latest() of a trimmed id gives None."""
        sub = backend.subsystem("orders")
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")

        async def scenario() -> None:
            for n in range(5):
                await writer.put(Ping(n=n), object_id=f"o-{n}", tags={"all": "yes"})

            removed = await sub.trim("client-ops", maxlen=2)

            assert 3 == removed
            assert [3, 4] == _numbers(await reader.read())
            assert None is await reader.latest("o-0")
            assert [3, 4] == _numbers(await reader.by_tag("all", "yes"))
            assert [3] == _numbers(await reader.by_tag("all", "yes", limit=1))

        run(scenario())

    def test_trim_by_max_age_drops_older_entries(self, backend: Backend, run: Run[None]) -> None:
        """trim(max_age_ms=60 s) drops an entry from ten minutes ago, keeps a fresh one."""
        sub = backend.subsystem("orders")
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")
        client = backend.client()
        stream = sub.keys.partition(0).stream(Kind.CLIENT_OPERATIONS)

        async def scenario() -> None:
            old_ms = await _server_ms(client) - 600_000
            # An entry as a writer ten minutes ago would have left it (explicit old id).
            await client.xadd(stream, _fields(Ping(n=0)), id=f"{old_ms}-0")
            await writer.put(Ping(n=1), object_id="fresh")

            removed = await sub.trim("client-ops", max_age_ms=60_000)

            assert 1 == removed
            assert [1] == _numbers(await reader.read())

        run(scenario())

    def test_trim_by_age_counts_milliseconds(self, backend: Backend, run: Run[None]) -> None:
        """An entry 5 ms old is older than max_age_ms=1: the cutoff is not rounded to seconds."""
        sub = backend.subsystem("orders")
        reader = sub.reader("client-ops")
        client = backend.client()
        stream = sub.keys.partition(0).stream(Kind.CLIENT_OPERATIONS)

        async def scenario() -> None:
            recent_ms = await _server_ms(client) - 5
            await client.xadd(stream, _fields(Ping(n=0)), id=f"{recent_ms}-0")

            removed = await sub.trim("client-ops", max_age_ms=1)

            assert 1 == removed
            assert 0 == await reader.length()

        run(scenario())

    def test_trim_older_than_a_datetime(self, backend: Backend, run: Run[None]) -> None:
        """trim(older_than=T) drops exactly the entries written before T."""
        sub = backend.subsystem("orders", partitions=2)
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")
        client = backend.client()

        async def scenario() -> None:
            put_ms = []
            for n in range(3):
                put = await writer.put(Ping(n=n), object_id=f"o-{n}")
                put_ms.append(_ms(put.entry_id))
                await _after_ms(client, put_ms[-1])

            removed = await sub.trim(
                "client-ops", older_than=datetime.fromtimestamp(put_ms[1] / 1000, UTC)
            )

            assert 1 == removed
            assert [1, 2] == _numbers(await reader.read())

        run(scenario())


def _fields(ping: Ping) -> dict[FieldT, EncodableT]:
    """The entry fields an old writer would have XADDed for ``ping``."""
    flat = encode(ping).fields()
    return {str(flat[k]): flat[k + 1] for k in range(0, len(flat), 2)}


class TestViews:
    """Views: stored as JSON bytes, returned as they are."""

    def test_a_view_is_stored_as_orjson_bytes_and_returned_raw(
        self, backend: Backend, run: Run[None]
    ) -> None:
        """A mapping view comes back as exactly orjson.dumps of it, undecoded."""
        sub = backend.subsystem("orders")
        writer, reader = sub.writer("views"), sub.reader("views")
        view = {"id": "o-1", "status": "sent", "to": ["a@example.com"], "n": 3}

        async def scenario() -> None:
            await writer.put_view("o-1", view)
            raw = await reader.latest_raw("o-1")
            record = await reader.latest("o-1")

            assert orjson.dumps(view) == raw
            assert record is not None
            assert (JSON, None, orjson.dumps(view)) == (
                record.envelope.fmt,
                record.message,
                record.raw,
            )

        run(scenario())

    def test_model_and_ready_bytes_views(self, backend: Backend, run: Run[None]) -> None:
        """A model is stored as its JSON; ready bytes are stored untouched, spaces and all."""
        sub = backend.subsystem("orders")
        writer, reader = sub.writer("views"), sub.reader("views")
        ready = b'{ "kept":  "as is" }'

        async def scenario() -> None:
            await writer.put_view("m", PingView(n=1, label="x"))
            await writer.put_view("b", ready)

            assert orjson.loads(b'{"n":1,"label":"x"}') == orjson.loads(
                await reader.latest_raw("m") or b""
            )
            assert ready == await reader.latest_raw("b")

        run(scenario())

    def test_put_view_keeps_the_newest_per_id(self, backend: Backend, run: Run[None]) -> None:
        """put_view keeps one view per id by default, and all of them with keep=0."""
        sub = backend.subsystem("orders")
        writer, reader = sub.writer("views"), sub.reader("views")
        sync_writer = sub.sync_writer("views")

        async def scenario() -> None:
            for n in range(3):
                await writer.put_view("one", {"n": n})
            for n in range(3):
                await writer.put_view("all", {"n": n}, keep=0)
            sync_writer.put_view("one", {"n": 3})

            views = [(r.object_id, orjson.loads(r.raw)["n"]) for r in await reader.read()]
            assert [("all", 0), ("all", 1), ("all", 2), ("one", 3)] == views
            assert b'{"n":3}' == await reader.latest_raw("one")

        run(scenario())


class TestPartitions:
    """Records spread over partitions by a stable hash of their key."""

    def test_records_land_in_the_partition_of_their_key(
        self, backend: Backend, run: Run[None]
    ) -> None:
        """Each put goes to stream partition crc32(object id) % P, and all partitions merge."""
        sub = backend.subsystem("orders", partitions=4)
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")
        client = backend.client()
        keys = [f"order-{n}" for n in range(20)]

        async def scenario() -> None:
            puts = {key: await writer.put(Ping(n=n), object_id=key) for n, key in enumerate(keys)}

            for key, put in puts.items():
                stream = sub.keys.partition(partition_of(key, 4)).stream(Kind.CLIENT_OPERATIONS)
                found = entries(await client.xrange(stream, put.entry_id, put.entry_id))
                assert [key.encode()] == [raw[b"obj"] for _, raw in found]
            used = {partition_of(key, 4) for key in keys}
            assert {0, 1, 2, 3} == used
            # Partitions order entries by time; two partitions' entries of one ms have no
            # order between them (order holds per key), so compare as a set.
            assert list(range(20)) == sorted(_numbers(await reader.read()))
            assert 20 == await reader.length()

        run(scenario())

    def test_all_keys_of_a_partition_share_one_hash_tag(
        self, backend: Backend, run: Run[None]
    ) -> None:
        """Every key written for partition p (streams, indexes, aggregates, delayed set, sequence)
        starts with {subsystem.p}, so it maps to one cluster slot."""
        sub = backend.subsystem("orders", partitions=3)
        writer = sub.writer("client-ops")
        views = sub.writer("views")
        accounts = sub.aggregates(Account)
        client = backend.client()

        async def scenario() -> None:
            for n in range(12):
                await writer.put(
                    Ping(n=n), object_id=f"o-{n}", tags={"to": f"x{n % 2}"},
                    on_existing=OnExisting.PRUNE,
                )  # fmt: skip
                await views.put_view(f"o-{n}", {"n": n})
                await writer.next_id()
                await accounts.append(f"acct-{n}", [Opened(owner="x")], expected_version=0)
                await writer.put(Ping(n=n), object_id=f"later-{n}", execute_earliest=2**40)

            by_partition: dict[int, set[int]] = {}
            # SCAN, not KEYS: on a cluster it walks every primary.
            for key in [k async for k in client.scan_iter("*")]:
                assert isinstance(key, bytes)
                text = key.decode()
                assert text.startswith("{orders."), text
                partition = int(text[len("{orders.") : text.index("}")])
                by_partition.setdefault(partition, set()).add(key_slot(key))
            assert {0, 1, 2} == set(by_partition)
            assert all(1 == len(slots) for slots in by_partition.values())
            assert 3 == len({next(iter(s)) for s in by_partition.values()})

        run(scenario())


def test_a_subsystem_on_a_sync_client_only_refuses_sync_writer_clearly(
    backend: Backend,
) -> None:
    """Asking a subsystem without a sync client for a sync writer says what to pass."""
    sub = Subsystem("orders", backend.client())

    with pytest.raises(ConfigurationError, match="sync_client="):
        sub.sync_writer("client-ops")


def test_unknown_kind_names_the_kinds(backend: Backend) -> None:
    """A misspelt stream kind is refused with the list of kinds."""
    sub = backend.subsystem("orders")

    with pytest.raises(ConfigurationError, match="client-ops"):
        sub.writer("client-opps")
    assert Kind.CLIENT_OPERATIONS == sub.writer("client_operations").kind


class TestSubscribe:
    """Following a stream live."""

    def test_subscribe_from_the_start_reads_every_partition_in_order(
        self, backend: Backend, run: Run[None]
    ) -> None:
        """after="0" yields what is there already, per key in order, then stops when idle."""
        sub = backend.subsystem("orders", partitions=3)
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")

        async def scenario() -> None:
            for n in range(9):
                await writer.put(Ping(n=n), object_id=f"o-{n % 3}")

            seen = [r async for r in reader.subscribe(after="0", block_ms=20, idle_limit=2)]

            assert list(range(9)) == sorted(_numbers(seen))
            for key in ("o-0", "o-1", "o-2"):
                of_key = _numbers([r for r in seen if r.object_id == key])
                assert sorted(of_key) == of_key

        run(scenario())

    def test_subscribe_from_now_skips_older_records_and_sees_new_ones(
        self, backend: Backend, run: Run[None]
    ) -> None:
        """after="$" never yields a record written before it started, and does yield later ones."""
        sub = backend.subsystem("orders", partitions=2)
        writer, reader = sub.writer("client-ops"), sub.reader("client-ops")

        async def scenario() -> None:
            await writer.put(Ping(n=-1), object_id="before")
            live = reader.subscribe(block_ms=20)
            first = asyncio.ensure_future(anext(live))
            # Keep writing until the subscriber has pinned its start and sees one (bounded).
            for n in range(500):
                if first.done():
                    break
                await writer.put(Ping(n=n), object_id=f"o-{n}")
                await asyncio.sleep(0.005)
            record = await asyncio.wait_for(first, timeout=5)
            await live.aclose()

            assert isinstance(record.message, Ping)
            assert record.message.n >= 0

        run(scenario())


def test_a_flushed_script_cache_is_reloaded(backend: Backend, run: Run[None]) -> None:
    """After SCRIPT FLUSH (a restarted server) puts and reads load their scripts again."""
    sub = backend.subsystem("orders")
    writer, reader = sub.writer("client-ops"), sub.reader("client-ops")
    client = backend.client()

    async def scenario() -> None:
        await writer.put(Ping(n=1), object_id="o-1")
        await client.script_flush()

        await writer.put(Ping(n=2), object_id="o-1")
        latest = await reader.latest("o-1")

        assert latest is not None
        assert Ping(n=2) == latest.message

    run(scenario())


def test_a_decoding_client_is_refused_up_front() -> None:
    """A client with decode_responses=True cannot read binary entries: refused when built."""
    decoding = redis.asyncio.Redis(decode_responses=True)
    sync_decoding = redis.Redis(decode_responses=True)

    with pytest.raises(ConfigurationError, match="decode_responses"):
        Subsystem("orders", decoding)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        Subsystem("orders", redis.asyncio.Redis(), sync_client=sync_decoding)
