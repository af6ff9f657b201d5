"""Cluster pieces in one process on a real redis-server: take-over of a lost worker's
new calls, what a worker answers while Redis is down, and call records that several
workers write."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from gateway.calls import CallManager
from gateway.cluster import keys
from gateway.cluster import router as router_module
from gateway.cluster.client import connect
from gateway.cluster.node import WorkerNode
from gateway.cluster.redis_server import RedisServer
from gateway.cluster.router import ClusterRouter
from gateway.cluster.store import RedisStore
from gateway.errors import CallError, UnavailableError
from gateway.events import CallConnect, CallStatus, Direction, Event, decode_event, encode_event
from gateway.graph import GraphClient
from gateway.records import CallRecord, CallState


@pytest.fixture
async def graph() -> AsyncIterator[GraphClient]:
    client = GraphClient(base_url="http://127.0.0.1:9/v23.0", access_token="x", phone_number_id="1")
    try:
        yield client
    finally:
        await client.aclose()


def _offer(call_id: str) -> CallConnect:
    return CallConnect(
        call_id=call_id,
        phone_number_id="1",
        from_="15551230001",
        to="15550783881",
        direction=Direction.USER_INITIATED,
        sdp_type="offer",
        sdp="v=0\r\n",
        timestamp=1700000000,  # fixed: the test compares offers made at different times
    )


def _worker(url: str, graph: GraphClient, got: list[Event]) -> ClusterRouter:
    calls = CallManager(graph)
    calls.dispatch = got.append  # type: ignore[method-assign]  # the events, not the calls
    return ClusterRouter(WorkerNode(url, calls, graph, lease_seconds=2), calls)


async def test_a_new_call_read_by_a_lost_worker_is_taken_by_another(
    redis_server: RedisServer, graph: GraphClient
) -> None:
    db = connect(redis_server.url)
    try:
        # "ghost" joined, read a new call from the stream, and died before claiming it.
        await db.xgroup_create(keys.NEW_CALLS, keys.PLACERS, id="0", mkstream=True)
        await db.hset(keys.WORKERS, "ghost", json.dumps({"calls": 0, "max": 10}))
        fields = {"event": encode_event(_offer("wacid.G")), "at": str(time.time())}
        await db.xadd(keys.NEW_CALLS, fields)
        read = await db.xreadgroup(keys.PLACERS, "ghost", {keys.NEW_CALLS: ">"}, count=1)
        assert read and read[0][1]
        got: list[Event] = []
        router = _worker(redis_server.url, graph, got)
        await router.start()
        try:
            async with asyncio.timeout(10):
                while not got:
                    await asyncio.sleep(0.05)
            assert got == [_offer("wacid.G")]
            assert await db.hget(keys.OWNERS, "wacid.G") == router.node.id
            assert not await db.hexists(keys.WORKERS, "ghost")
        finally:
            await router.aclose()
    finally:
        await db.aclose()


async def test_without_redis_webhooks_are_unavailable_and_the_worker_says_so(
    redis_server: RedisServer, graph: GraphClient
) -> None:
    got: list[Event] = []
    router = _worker(redis_server.url, graph, got)
    await router.start()
    try:
        assert router.status()["redis"] == "up"
        await redis_server.stop(kill=True)
        with pytest.raises(UnavailableError, match="Redis"):
            await router.deliver(_offer("wacid.U"))
        assert router.status()["redis"] == "down" and got == []
        await redis_server.start()
        async with asyncio.timeout(10):
            while router.status()["redis"] != "up":
                await asyncio.sleep(0.05)
        assert router.node.reconnects == 1
        # The retry of the refused delivery is taken now (not dropped as a duplicate).
        assert await router.deliver(_offer("wacid.U"))
        async with asyncio.timeout(10):
            while not got:
                await asyncio.sleep(0.05)
        assert got == [_offer("wacid.U")]
    finally:
        await router.aclose()


async def test_the_cluster_wide_call_limit_rejects_beyond_it(
    redis_server: RedisServer, graph: GraphClient
) -> None:
    got: list[Event] = []
    router = _worker(redis_server.url, graph, got)
    router.cluster_max_calls = 2
    refused: list[str] = []
    router.calls.reject = lambda call_id, reason, detail="": refused.append(reason)  # type: ignore[method-assign]
    await router.start()
    db = connect(redis_server.url)
    try:
        await db.sadd(keys.LIVE, "wacid.1", "wacid.2")  # two calls up somewhere in the cluster
        assert await router.deliver(_offer("wacid.3"))
        assert refused == ["capacity"] and router.rejected_full == 1
        assert await db.xlen(keys.NEW_CALLS) == 0 and got == []
        with pytest.raises(CallError, match="cluster at capacity"):
            await router.admit_new_call()  # POST /calls answers 503 with this
        await db.srem(keys.LIVE, "wacid.2")
        assert await router.deliver(_offer("wacid.4"))
        async with asyncio.timeout(10):
            while not got:
                await asyncio.sleep(0.05)
        assert got == [_offer("wacid.4")]
    finally:
        await db.aclose()
        await router.aclose()


async def test_a_status_overtaking_the_owner_of_a_placed_call_still_reaches_it(
    redis_server: RedisServer, graph: GraphClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Worker A placed the call: its record (DIALING) is in Redis, its owner entry not yet
    # (the two are separate writes). WhatsApp's RINGING reaches worker B meanwhile.
    monkeypatch.setattr(router_module, "OWNER_WAIT", 3600.0)  # no deadline decides here
    got: list[Event] = []
    router = _worker(redis_server.url, graph, got)
    db = connect(redis_server.url)
    placed = CallRecord("wacid.P", Direction.BUSINESS_INITIATED, "15551230001")
    placed.state = CallState.DIALING
    ringing = CallStatus("wacid.P", "1", "RINGING", 1700000000, "15551230001")
    try:
        await db.set(keys.record("wacid.P"), json.dumps(placed.as_dict()))
        delivery = asyncio.create_task(router.deliver(ringing))
        # B must wait for the owner, not take the record for a sign that the call ended.
        done, _ = await asyncio.wait({delivery}, timeout=0.5)
        assert not done and got == [], "handled by a worker that does not own the call"
        await db.hset(keys.OWNERS, "wacid.P", "worker-a")
        assert await asyncio.wait_for(delivery, 10)
        assert got == []
        [(_, fields)] = await db.xrange(keys.inbox("worker-a"))
        assert decode_event(fields["event"]) == ringing
        # Once the call ended (record ENDED, no owner), a status is handled at once, here
        # (the call manager adds it to the ended record).
        placed.state = CallState.ENDED
        await db.set(keys.record("wacid.P"), json.dumps(placed.as_dict()))
        await db.hdel(keys.OWNERS, "wacid.P")
        late = CallStatus("wacid.P", "1", "REJECTED", 1700000001, "15551230001")
        assert await asyncio.wait_for(router.deliver(late), 30)  # not OWNER_WAIT
        assert got == [late]
    finally:
        await db.aclose()
        await router.aclose()


async def test_a_worker_is_never_listed_without_its_lease(
    redis_server: RedisServer, graph: GraphClient
) -> None:
    # Redis came back empty: a worker's first write may be its mirror's (a call changed
    # state), not its lease renewal's. Listed without a lease, it would look lost to
    # the other workers' reapers, which end its calls.
    node = WorkerNode(redis_server.url, CallManager(graph), graph, lease_seconds=2)
    other = WorkerNode(redis_server.url, CallManager(graph), graph, lease_seconds=2)
    db = connect(redis_server.url)
    live = SimpleNamespace(id="wacid.L", state=CallState.ACTIVE)
    try:
        node.call_answered(live)  # type: ignore[arg-type]  # a call as the mirror sees one
        await node._flush()  # the mirror's write; no renewal has run
        assert await db.hexists(keys.WORKERS, node.id)
        assert await db.exists(keys.lease(node.id)), "listed without a lease"
        await other.reaper.reap_lost_workers()
        assert other.reaper.reaped_calls == 0
        assert await db.hget(keys.OWNERS, "wacid.L") == node.id
    finally:
        await db.aclose()
        for n in (node, other):
            await n.aclose()


def _ended(call_id: str, *statuses: str) -> CallRecord:
    record = CallRecord(call_id, Direction.BUSINESS_INITIATED, "15551230001")
    record.state, record.ended_at, record.statuses = CallState.ENDED, time.time(), [*statuses]
    return record


async def test_a_late_status_saved_by_another_worker_survives_the_owners_next_save(
    redis_server: RedisServer, graph: GraphClient
) -> None:
    # The call ended on its owner, which keeps its record in memory (history). A late
    # status reaches another worker, which adds it to the record in Redis; a later one
    # reaches the owner, which adds it to its own copy and saves that.
    owner = CallManager(graph, store=RedisStore(redis_server.url, "owner"))
    other = CallManager(graph, store=RedisStore(redis_server.url, "other"))
    record = _ended("wacid.S", "RINGING")
    owner.ledger.remember(record)
    await owner.ledger.save(record)
    try:
        for manager in (owner, other):
            await manager.start()
        other.dispatch(CallStatus("wacid.S", "1", "ACCEPTED", 1700000001, "15551230001"))
        await other.drain()
        owner.dispatch(CallStatus("wacid.S", "1", "REJECTED", 1700000002, "15551230001"))
        await owner.drain()
        saved = await other.store.get_call("wacid.S")
        assert saved is not None
        assert Counter(saved.statuses) == Counter(["RINGING", "ACCEPTED", "REJECTED"])
        assert Counter(record.statuses) == Counter(saved.statuses)  # the owner's copy too
    finally:
        for manager in (owner, other):
            await manager.aclose()
            await manager.store.close()


async def test_a_stale_copy_saved_last_keeps_what_others_reported(
    redis_server: RedisServer,
) -> None:
    # Worker B read the ended record (for a late status); meanwhile the owner saved
    # WhatsApp's terminate record into it; then B saves its copy, which has neither.
    owner, other = RedisStore(redis_server.url, "owner"), RedisStore(redis_server.url, "other")
    record = _ended("wacid.T", "RINGING")
    try:
        await owner.save_call(record)
        stale = await other.get_call("wacid.T")
        assert stale is not None
        record.terminate_status, record.duration = "COMPLETED", 42
        record.errors = [{"code": 131044, "title": "x"}]
        await owner.save_call(record)
        stale.statuses.append("ACCEPTED")
        await other.save_call(stale)
        for saved in (await owner.get_call("wacid.T"), stale):
            assert saved is not None
            assert (saved.terminate_status, saved.duration) == ("COMPLETED", 42)
            assert saved.errors == [{"code": 131044, "title": "x"}]
            assert Counter(saved.statuses) == Counter(["RINGING", "ACCEPTED"])
        # The same status reported twice (two deliveries Meta made) stays twice.
        stale.statuses.append("ACCEPTED")
        await other.save_call(stale)
        await owner.save_call(record)
        saved = await owner.get_call("wacid.T")
        assert saved is not None
        assert Counter(saved.statuses) == Counter(["RINGING", "ACCEPTED", "ACCEPTED"])
    finally:
        for store in (owner, other):
            await store.close()


async def test_a_cancel_while_a_redis_command_is_sent_is_never_lost(
    redis_server: RedisServer,
) -> None:
    # Python 3.11's wait_for, which redis-py sends a command through, returns normally
    # when the task is cancelled in the moment the send finishes: the cancel was lost,
    # and a loop cancelled there went on. Cancelled at each of a command's first steps
    # (the send is among them), every command still running must raise.
    redis = connect(redis_server.url)
    script = redis.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
    commands = {
        "command": lambda n: redis.set("k", n),
        "script": lambda n: script(keys=["k"], args=[n]),
        "pipeline": lambda n: redis.pipeline(transaction=False).set("k", n).get("k").execute(),
    }
    lost: Counter[str] = Counter()
    try:
        await redis.ping()
        for name, command in commands.items():
            for steps in range(1, 30):
                task = asyncio.create_task(command(steps))
                for _ in range(steps):
                    await asyncio.sleep(0)
                if not task.cancel():
                    continue  # done already
                try:
                    await task
                    lost[name] += 1
                except asyncio.CancelledError:
                    pass
                # The dropped connection's reply is not served to the next command.
                assert await redis.set("k", -steps)
                assert await redis.get("k") == str(-steps)
        assert not lost, f"cancels lost: {dict(lost)}"
    finally:
        await redis.aclose()
