from tests.conftest import Backend, Run
from tests.messages import Ping
from streams import OnExisting


def test_put_and_latest(backend: Backend, run: Run) -> None:
    sub = backend.subsystem("smoke")
    async def go():
        w = sub.writer("client-ops"); r = sub.reader("client-ops")
        oid = await w.next_id()
        res = await w.put(Ping(n=1), object_id=oid, tags={"to": "a@x"})
        res2 = await w.put(Ping(n=2), object_id=oid, on_existing=OnExisting.SKIP)
        latest = await r.latest(oid)
        tagged = await r.by_tag("to", "a@x")
        return res, res2, latest, tagged
    res, res2, latest, tagged = run(go())
    assert res.written and not res2.written and res2.entry_id == res.entry_id
    assert latest is not None and latest.message == Ping(n=1)
    assert [t.message for t in tagged] == [Ping(n=1)]
