"""The bot runtime's pure parts: backoff, what each entry is taken for, app loading, packing."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection

from streamcqrs.bots.bot import Bot
from streamcqrs.bots.config import BotConfig
from streamcqrs.bots.supervisor import load_app
from streamcqrs.domain.errors import ConfigurationError
from streamcqrs.handlers import App
from streamcqrs.handlers.delivery import NoHandler, Verdict, sources
from streamcqrs.streams._wire import _pack_command
from streamcqrs.streams.commit import ATTEMPT_FIELD, CONCERN_FIELD
from streamcqrs.streams.envelope import encode
from tests.botapps import Do, Done, app


def fields_of(message: object, **extra: bytes) -> dict[bytes, bytes]:
    """An entry's raw fields as XREADGROUP returns them."""
    envelope = encode(message, object_id="1")  # type: ignore[arg-type]
    flat = envelope.fields()
    raw = {str(k).encode(): v if isinstance(v, bytes) else str(v).encode()
           for k, v in zip(flat[::2], flat[1::2], strict=True)}  # fmt: skip
    return raw | {k.encode(): v for k, v in extra.items()}


def source_of(concern: str):  # type: ignore[no-untyped-def]
    """The app's source (partition 0) for one concern."""
    (found,) = [s for s in sources(app) if s.concern == concern]
    return found


class TestBackoff:
    """Retry delays grow exponentially, are jittered down by at most the jitter, are capped."""

    def test_each_delay_is_above_the_previous_ones_range(self) -> None:
        """With 25% jitter, delay n+1 is at least 1.5x delay n's largest value, so attempts
        back off even at the jitter's extremes."""
        config = BotConfig(retry_base=1.0, retry_jitter=0.25)
        for attempt in range(1, 6):
            low = min(config.policy.delay(attempt + 1) for _ in range(200))
            high = max(config.policy.delay(attempt) for _ in range(200))
            assert high < low

    def test_delays_stay_within_base_times_two_to_the_attempt_and_the_cap(self) -> None:
        """Delay after attempt n is in [0.75, 1] x base x 2**(n-1), never above the cap."""
        config = BotConfig(retry_base=0.5, retry_cap=3.0, retry_jitter=0.25)
        assert all(0.375 <= config.policy.delay(1) <= 0.5 for _ in range(100))
        assert all(2.25 <= config.policy.delay(10) <= 3.0 for _ in range(100))

    def test_nonsense_settings_are_refused(self) -> None:
        """Zero concurrency or attempts, a non-positive timeout, jitter >= 1 are refused."""
        for bad in ({"concurrency": 0}, {"max_attempts": 0}, {"visibility_timeout": 0},
                    {"retry_jitter": 1.0}):  # fmt: skip
            with pytest.raises(ConfigurationError):
                BotConfig(**bad)


class TestClassify:
    """What a bot does with each entry it reads."""

    def test_a_handled_type_is_handled_with_its_attempt(self) -> None:
        """A Do on the ``do`` concern is handled; the attempt field says which attempt."""
        delivery = source_of("do").classify("1-0", fields_of(Do(n=1), att=b"3"), "c")
        assert (Verdict.HANDLE, 3, Do(n=1)) == (delivery.verdict, delivery.attempt,
                                               delivery.message)  # fmt: skip

    def test_a_type_another_concern_handles_is_skipped(self) -> None:
        """A Do read by the ``doomed`` concern's group is acked without running anything."""
        assert Verdict.SKIP == source_of("doomed").classify("1-0", fields_of(Do(n=1)), "c").verdict

    def test_a_retry_for_another_concern_is_skipped(self) -> None:
        """An entry put back for the ``flaky`` concern's retry is no business of ``do``."""
        raw = fields_of(Do(n=1), **{CONCERN_FIELD.decode(): b"flaky"})
        assert Verdict.SKIP == source_of("do").classify("1-0", raw, "c").verdict

    def test_bad_input_is_dead(self) -> None:
        """No envelope, an unregistered type, a payload that does not validate: dead."""
        good = fields_of(Do(n=1))
        for raw in ({b"x": b"y"}, good | {b"type": b"no.Such"}, good | {b"data": b"\x81\xa1n\xa1x"},
                    good | {ATTEMPT_FIELD: b"many"}):  # fmt: skip
            assert Verdict.DEAD == source_of("do").classify("1-0", raw, "c").verdict

    def test_only_limits_the_sources_to_some_subsystems(self) -> None:
        """--only names subsystems: others' handlers are not run."""
        assert [] == sources(app, ("elsewhere",))
        assert 9 == len(sources(app, ("botapp",)))

    def test_a_type_no_handler_takes_on_an_operation_stream_is_dead_with_the_reason(self) -> None:
        """A registered type that no concern of the app handles on client-ops is not dropped
        unseen: dead, "no handler for TYPE on STREAM"."""
        delivery = source_of("do").classify("1-0", fields_of(Done(n=1)), "c")
        assert (Verdict.DEAD, NoHandler) == (delivery.verdict, type(delivery.error))
        assert "no handler for botapp.Done on botapp/client-ops" in str(delivery.error)

    def test_a_type_the_app_ignores_there_is_skipped(self) -> None:
        """app.ignore(Type, stream=...) drops that type on that stream without a dead letter."""
        quiet = App("quiet")
        quiet.handler(Do, stream="botapp/client-ops", concern="do")(lambda op, ctx: None)
        quiet.ignore(Done, stream="botapp/client-ops")
        (source,) = sources(quiet)
        assert Verdict.SKIP == source.classify("1-0", fields_of(Done(n=1)), "c").verdict

    def test_an_event_stream_skips_the_types_a_concern_does_not_take(self) -> None:
        """On an events stream a concern picks the types it handles; the others are skipped."""
        listener = App("listener")
        listener.handler(Done, stream="botapp/events", concern="seen")(lambda ev, ctx: None)
        (source,) = sources(listener)
        assert Verdict.SKIP == source.classify("1-0", fields_of(Do(n=1)), "c").verdict


class TestLoadApp:
    """``MODULE:APP`` is found, or the error says what is wrong."""

    def test_the_app_is_loaded(self) -> None:
        """The spec names the App object."""
        assert app is load_app("tests.botapps:app")

    @pytest.mark.parametrize("spec", ["tests.botapps", "tests.botapps:nothing", "tests.botapps:Do"])
    def test_a_wrong_spec_is_refused(self, spec: str) -> None:
        """No colon, a missing attribute, or something that is not an App."""
        with pytest.raises(ConfigurationError):
            load_app(spec)


def test_hiredis_packing_is_byte_for_byte_redis_pys() -> None:
    """The faster packer writes the very bytes redis-py's own would, multi-word names too."""
    conn = Connection()
    for args in (("XGROUP CREATE", "s", "g", "0", "MKSTREAM"),
                 ("EVALSHA", "ab" * 20, 2, "{k}:1", b"\x00\xff", 1.5, -3)):  # fmt: skip
        ours = b"".join(_pack_command(conn, *args))
        theirs = b"".join(Connection.pack_command(conn, *args))
        assert theirs == ours


def test_the_connection_pool_fits_every_handler_in_flight_and_every_reader() -> None:
    """A high --concurrency gets a pool big enough for it (the default holds 100)."""
    bot = Bot(app, BotConfig(url="redis://127.0.0.1:1", concurrency=300))

    assert bot.client.connection_pool.max_connections >= 300 + len(bot.sources)
