"""Order per object across retries (``ordered=True``), with real bots on a real server.

Each handled ``Step`` appends ``Stepped(n)`` to its object's aggregate, so the aggregate's
events are the order the concern handled that object's entries in. Without ordering a
retried entry goes behind the later ones; with it, later entries of the object wait for it.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from streamcqrs.bots import Bot, BotConfig
from streamcqrs.domain import Aggregate, Event, Operation, message
from streamcqrs.handlers import App, Context
from streamcqrs.handlers import acl as app_acl
from streamcqrs.handlers.errors import HandlerError
from streamcqrs.streams import Kind, Subsystem, SubsystemKeys, acl
from tests.reliability.bots import wait_until
from tests.support import Backend, Run

KEYS = SubsystemKeys("inturn")
ROOT = Path(__file__).resolve().parents[1]


@message("inturn.Step")
class Step(Operation):
    """The n-th step of an object; its first ``fails`` attempts raise."""

    n: int
    fails: int = 0
    pause: float = 0.0


@message("inturn.Stepped")
class Stepped(Event):
    """A step was handled."""

    n: int


class Track(Aggregate):
    """The steps of one object, in the order they were handled."""

    steps: tuple[int, ...] = ()

    def apply(self, event: Event) -> None:
        """Note the step."""
        if isinstance(event, Stepped):
            self.steps = (*self.steps, event.n)


async def step(op: Step, ctx: Context) -> None:
    """Fail the first ``fails`` attempts, then record the step on the object's aggregate."""
    if op.pause:
        await asyncio.sleep(op.pause)
    if ctx.attempt <= op.fails:
        raise RuntimeError(f"step {op.n} of {ctx.object_id} fails attempt {ctx.attempt}")
    track = await ctx.load(Track, ctx.object_id)
    ctx.append(track, Stepped(n=op.n))


def app_of(*, ordered: bool) -> App:
    """The test app, with or without order per object."""
    app = App("inturn")
    app.handler(Step, stream="inturn/client-ops", appends=["inturn"], ordered=ordered)(step)
    return app


APP = app_of(ordered=True)
"""What the bot processes run: ``streamcqrs run tests.test_bots_ordered:APP``."""


def put_steps(real: Backend, run: Run[Any], steps: list[tuple[str, Step]]) -> None:
    """A client puts each (object, step), in this order."""
    writer = Subsystem("inturn", real.client()).writer("client-ops")

    async def put_all() -> None:
        for obj, op in steps:
            await writer.put(op, object_id=obj)

    run(put_all())


def handled(real: Backend, run: Run[Any], obj: str) -> list[int]:
    """The steps of ``obj`` in the order they were handled."""
    return list(run(Subsystem("inturn", real.client()).aggregates(Track).load(obj)).steps)


def count(real: Backend, obj: str) -> int:
    """How many steps of ``obj`` were handled (its aggregate's version), read synchronously."""
    return int(real.sync_client().llen(KEYS.partition(0).aggregate(obj)))


def run_in_process(real: Backend, run: Run[Any], app: App, done: Any) -> None:
    """A bot of ``app`` in this process, until ``done()`` (bounded: 30 s)."""

    async def scenario() -> None:
        config = BotConfig(url=real.url, block_ms=50, mover_interval=0.02, retry_base=0.05,
                           retry_jitter=0)  # fmt: skip
        bot = Bot(app, config)
        task = asyncio.create_task(bot.run())
        deadline = time.monotonic() + 30
        try:
            while not done():
                assert time.monotonic() < deadline, "the bot did not finish in 30 s"
                assert not task.done(), task
                await asyncio.sleep(0.02)
        finally:
            bot.stop()
            await task
            await bot.client.aclose()

    run(scenario())


@pytest.mark.parametrize("ordered", [False, True])
def test_a_retried_entry_keeps_its_place_only_when_ordered(
    real: Backend, run: Run[Any], ordered: bool
) -> None:
    """Step 0 of one object fails once: unordered, it is handled last (it went back behind
    steps 1..4, which ran meanwhile in any order); ordered, steps 1..4 wait for it."""
    put_steps(real, run, [("a", Step(n=n, fails=1 if n == 0 else 0)) for n in range(5)])

    run_in_process(real, run, app_of(ordered=ordered), lambda: count(real, "a") == 5)

    steps = handled(real, run, "a")
    if ordered:
        assert [0, 1, 2, 3, 4] == steps
    else:
        assert ([0, 1, 2, 3, 4], 0) == (sorted(steps), steps[-1])
    client = real.sync_client()
    turns = KEYS.partition(0).order_turns(Kind.CLIENT_OPERATIONS, "step")
    assert 0 == client.hlen(turns), "every turn was handed back"


def test_two_bot_processes_handle_each_object_in_order_across_random_failures(
    real: Backend, run: Run[Any], tmp_path: Path
) -> None:
    """3 objects x 100 steps, put interleaved, about a third failing once or twice first;
    two bot processes, logged in as the bot user ``acl`` generates: every object's steps
    are handled exactly once each, in the order they were put, and no turn or parked entry
    is left behind."""
    rng = random.Random(20261130)
    objects = ["x", "y", "z"]
    steps = [
        (obj, Step(n=n, fails=rng.choice((0, 0, 0, 0, 1, 2)), pause=rng.choice((0, 0.002))))
        for n in range(100)
        for obj in objects
    ]
    admin = real.sync_client()
    password = acl.new_password()
    roles = app_acl.roles(APP)
    for role in roles.roles:
        role.apply(admin, password)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env |= {"REDIS_USERNAME": "inturn-bot", "REDIS_PASSWORD": password}
    args = [
        sys.executable, "-m", "streamcqrs", "run", "tests.test_bots_ordered:APP",
        "--url", real.url or "", "--block-ms", "100", "--retry-base", "0.02",
        "--retry-cap", "0.1", "--mover-interval", "0.02", "--log-level", "warning",
    ]  # fmt: skip
    logs = [tmp_path / f"bot{n}.log" for n in range(2)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for log in logs:
            with log.open("wb") as out:
                procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=out,
                                              stderr=subprocess.STDOUT))  # fmt: skip
        put_steps(real, run, steps)
        wait_until(
            lambda: all(count(real, obj) >= 100 for obj in objects),
            "300 steps handled", 60,
            lambda: "\n".join(log.read_text()[-3000:] for log in logs),
        )  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        admin.execute_command("ACL", "DELUSER", *[r.name for r in roles.roles])

    lines = [line for log in logs for line in log.read_text().splitlines()]
    assert not [line for line in lines if "NOPERM" in line], "the bot user was refused"
    failed = [line for line in lines if '"level": "error"' in line or not line.startswith("{")]
    assert not failed, "\n".join(failed[-20:])
    for obj in objects:
        assert list(range(100)) == handled(real, run, obj), obj
    part = KEYS.partition(0)
    concern = "step"
    assert 0 == admin.hlen(part.order_turns(Kind.CLIENT_OPERATIONS, concern))
    assert 0 == admin.zcard(part.order_queue(Kind.CLIENT_OPERATIONS, concern))
    assert 0 == admin.xlen(part.order_waiting(Kind.CLIENT_OPERATIONS, concern))
    assert sum(1 for _, s in steps if s.fails) > 60, "the random failures did happen"


def test_ordered_and_broadcast_together_are_refused() -> None:
    """Order per object needs one shared group; a broadcast concern has one per process."""
    app = App("inturn")
    with pytest.raises(HandlerError, match="ordered=True needs a shared consumer group"):
        app.handler(Step, stream="inturn/client-ops", ordered=True, broadcast=True)(step)
