"""Every call ends in a cluster, in one process on a real redis-server: WhatsApp's
terminate that reaches a worker other than the one the call ended on, a terminate
forwarded to a worker that dies, a worker that was taken for lost during a stall
and comes back to a call another worker ended, and the business backend's
call.ended for a lost worker's calls (from racing reapers, from a reaper that took
over from one that died midway, and from a stale worker: one id, one end)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.call import Call
from gateway.calls import CallManager
from gateway.cluster import inbox as inbox_module
from gateway.cluster import keys
from gateway.cluster.client import connect
from gateway.cluster.node import WorkerNode
from gateway.cluster.redis_server import RedisServer
from gateway.cluster.router import ClusterRouter
from gateway.cluster.store import RedisStore
from gateway.errors import StoreError
from gateway.events import CallTerminate, Direction, decode_event
from gateway.graph import GraphClient, RetryPolicy
from gateway.outbox import EventOutbox, event_id, make_event
from gateway.records import CallRecord, CallState
from gateway.sandbox.cloud import CloudAPISandbox

from .backend import SECRET, Receiver, wait_for
from .conftest import ACCESS_TOKEN, APP_SECRET


@pytest.fixture
async def sandbox() -> AsyncIterator[CloudAPISandbox]:
    cloud = CloudAPISandbox(webhook_url="", app_secret=APP_SECRET, access_token=ACCESS_TOKEN)
    await cloud.start()
    try:
        yield cloud
    finally:
        await cloud.aclose()


@pytest.fixture
async def graph(sandbox: CloudAPISandbox) -> AsyncIterator[GraphClient]:
    client = GraphClient(
        base_url=sandbox.graph_url,
        access_token=ACCESS_TOKEN,
        phone_number_id=sandbox.phone_number_id,
        retry=RetryPolicy(attempts=1),
    )
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def workers(
    redis_server: RedisServer, graph: GraphClient
) -> AsyncIterator[dict[str, ClusterRouter]]:
    """Workers "a", "b" and "c" as `gateway serve` wires them, none of their loops started
    (each test starts what it needs, so no reaper or lease runs behind its back)."""
    made: dict[str, ClusterRouter] = {}
    for name in ("a", "b", "c"):
        store = RedisStore(redis_server.url, name)
        calls = CallManager(graph, store=store)
        node = WorkerNode(
            redis_server.url, calls, graph, lease_seconds=2, worker_id=name, store=store
        )
        made[name] = ClusterRouter(node, calls)
    try:
        yield made
    finally:
        for router in made.values():
            await router.calls.aclose()
            await router.aclose()
            await router.calls.store.close()


def _terminate(call_id: str) -> CallTerminate:
    return CallTerminate(
        call_id=call_id,
        phone_number_id="1",
        from_="15551230001",
        to="15550783881",
        direction=Direction.USER_INITIATED,
        status="COMPLETED",
        timestamp=1700000000,
        duration=42,
    )


async def _live_call(router: ClusterRouter, call_id: str) -> Call:
    """An answered call on ``router``'s worker, registered and saved as the call
    manager and the node do it (no media: nothing here needs any)."""
    calls = router.calls
    record = CallRecord(call_id, Direction.USER_INITIATED, "15551230001")
    call = Call(record, graph=calls.graph, on_ended=calls._ended)
    calls.calls[call_id] = call
    call.set_state(CallState.PRE_ACCEPTED, "pre-accepted")
    call.set_state(CallState.ACTIVE, "accepted")
    router.node.call_answered(call)
    await router.node._flush()  # the lease, the owner entry and the live sets
    await calls.ledger.save(record)
    return call


async def _stored(redis_server: RedisServer, call_id: str) -> dict[str, object]:
    db = connect(redis_server.url)
    try:
        raw = await db.get(keys.record(call_id))
    finally:
        await db.aclose()
    assert raw is not None
    stored: dict[str, object] = json.loads(raw)
    return stored


async def test_a_terminate_after_the_owner_hung_up_is_handed_to_it(
    redis_server: RedisServer, workers: dict[str, ClusterRouter]
) -> None:
    # Worker a hung up its call (our terminate); WhatsApp's terminate, the billing
    # record that a's call.ended event waits for, reaches worker b.
    a, b = workers["a"], workers["b"]
    # Waits as long as it takes: the event must not go without the terminate record.
    outbox = EventOutbox(a.calls.store, url="http://127.0.0.1:9/", secret="s", terminate_wait=1e6)
    a.calls.observers.append(outbox)
    await outbox.start()
    try:
        call = await _live_call(a, "wacid.H")
        await call.end("hung up through the API", terminate=True)
        await a.calls.flush()
        await a.node._flush()  # the mirror's write of the end
        db = connect(redis_server.url)
        try:
            assert not await db.hexists(keys.OWNERS, "wacid.H")  # ended: no owner any more
            assert await b.deliver(_terminate("wacid.H"))
            # In a's inbox (not only in the record in Redis, which a's copy never reads).
            [(_, fields)] = await db.xrange(keys.inbox("a"))
            assert decode_event(fields["event"]) == _terminate("wacid.H")
        finally:
            await db.aclose()
        await a.calls.start()
        a.inbox.start()
        async with asyncio.timeout(10):
            # Stored ahead of the terminate record (held), then replaced by the one with it.
            while not (ended := await _events(a, "call.ended")) or not ended[0]["terminate_status"]:
                await asyncio.sleep(0.02)
    finally:
        await outbox.aclose()
    assert (ended[0]["terminate_status"], ended[0]["duration"]) == ("COMPLETED", 42)
    await a.calls.drain()
    await a.calls.flush()
    stored = await _stored(redis_server, "wacid.H")
    assert (stored["terminate_status"], stored["duration"]) == ("COMPLETED", 42)
    assert (stored["state"], stored["end_reason"]) == ("ENDED", "hung up through the API")


async def _events(router: ClusterRouter, kind: str) -> list[dict[str, Any]]:
    """The calls of ``kind`` events in the worker's outbox (none is delivered here)."""
    due = await router.calls.store.outbox_due(float("inf"), 100)
    return [json.loads(e.body)["call"] for e in due if e.type == kind]


async def test_a_terminate_handed_to_a_worker_that_dies_is_kept_by_its_reaper(
    redis_server: RedisServer, workers: dict[str, ClusterRouter], monkeypatch: pytest.MonkeyPatch
) -> None:
    # b hands WhatsApp's terminate to the call's owner a (its lease is still there),
    # and a dies before reading its inbox: b's reaper ends the call and keeps the
    # terminate record that was in a's inbox.
    a, b = workers["a"], workers["b"]
    await _live_call(a, "wacid.D")
    assert await b.deliver(_terminate("wacid.D"))
    # And a DELETE /calls/wacid.D reached b, which asked a (its answer never comes).
    monkeypatch.setattr(inbox_module, "REQUEST_TIMEOUT", 3600.0)  # only an answer ends it
    asking = asyncio.create_task(b.hang_up("wacid.D"))
    db = connect(redis_server.url)
    try:
        async with asyncio.timeout(10):
            while await db.xlen(keys.inbox("a")) < 2:
                await asyncio.sleep(0.02)
        await db.delete(keys.lease("a"))  # a is gone (its lease expired)
    finally:
        await db.aclose()
    await b.calls.start()
    b.node.reaper.hooks.append(b.inbox.take_over)  # as ClusterRouter.start wires it
    await b.node.reaper.reap_lost_workers()
    # Answered by b's reaper: the call is no longer live (the API's 404).
    assert await asyncio.wait_for(asking, 10) is None
    await b.calls.drain()
    await b.calls.flush()
    assert b.node.reaper.reaped_calls == 1
    stored = await _stored(redis_server, "wacid.D")
    assert (stored["state"], stored["end_reason"]) == ("ENDED", "worker a lost")
    assert (stored["terminate_status"], stored["duration"]) == ("COMPLETED", 42)


async def _lease_lapses(redis_server: RedisServer, worker: str) -> None:
    """``worker``'s lease expires: it died, or stalled past it."""
    db = connect(redis_server.url)
    try:
        await db.delete(keys.lease(worker))
    finally:
        await db.aclose()


async def _reap_a(a: ClusterRouter, b: ClusterRouter, redis_server: RedisServer) -> None:
    """a stalls past its lease; b's reaper ends a's calls (terminate, record ENDED)."""
    await _lease_lapses(redis_server, "a")
    await b.node.reaper.reap_lost_workers()
    assert b.node.reaper.reaped_calls == 1


async def test_a_reaped_worker_cannot_revive_its_call_and_ends_it_once(
    redis_server: RedisServer,
    sandbox: CloudAPISandbox,
    workers: dict[str, ClusterRouter],
) -> None:
    a, b = workers["a"], workers["b"]
    call = await _live_call(a, "wacid.R")
    await _reap_a(a, b, redis_server)
    reaped = await _stored(redis_server, "wacid.R")
    assert (reaped["state"], reaped["end_reason"]) == ("ENDED", "worker a lost")
    # a wakes up and saves its copy of the call (a status came), which says ACTIVE.
    call.record.statuses.append("ACCEPTED")
    await a.calls.ledger.save(call.record)
    stored = await _stored(redis_server, "wacid.R")
    assert stored["state"] == "ENDED", "a reaped worker revived its call's record"
    assert (stored["end_reason"], stored["ended_at"]) == ("worker a lost", reaped["ended_at"])
    assert stored["statuses"] == ["ACCEPTED"]
    # a learnt that it lost the call: it ends it here (media, bot, slot), once.
    await asyncio.wait_for(call.ended.wait(), 10)
    await a.calls.flush()
    assert "wacid.R" not in a.calls.calls and a.node.ended_elsewhere_calls == 1
    await a.node.renew()  # the renewal would learn it too: still once
    assert a.node.ended_elsewhere_calls == 1
    stored = await _stored(redis_server, "wacid.R")
    assert (stored["state"], stored["end_reason"]) == ("ENDED", "worker a lost")
    assert stored["ended_at"] == reaped["ended_at"]
    assert call.record.end_reason == "worker a lost"  # a's copy took the first end
    # One terminate went to WhatsApp: the reaper's.
    terminates = [r for r in sandbox.requests if r.action == "terminate"]
    assert len(terminates) == 1, terminates


async def test_a_reaped_worker_learns_it_at_its_next_lease_renewal(
    redis_server: RedisServer, workers: dict[str, ClusterRouter]
) -> None:
    # A call that saves nothing (no status, no end) must not stay up on a worker that
    # lost it, nor be registered as its again.
    a, b = workers["a"], workers["b"]
    lost = await _live_call(a, "wacid.N")
    await _reap_a(a, b, redis_server)
    kept = await _live_call(a, "wacid.K")  # taken after the reap: still a's
    await a.node.renew()
    await asyncio.wait_for(lost.ended.wait(), 10)
    await a.calls.flush()
    await a.node._flush()
    db = connect(redis_server.url)
    try:
        assert await db.hget(keys.OWNERS, "wacid.N") is None, "the lost call registered again"
        assert await db.hget(keys.OWNERS, "wacid.K") == "a"
        assert await db.smembers(keys.worker_calls("a")) == {"wacid.K"}
        assert await db.smembers(keys.LIVE) == {"wacid.K"}
        assert not await db.exists(keys.reaping("a")), "a lost again would wait for the lock"
    finally:
        await db.aclose()
    assert kept.state is CallState.ACTIVE and a.node.ended_elsewhere_calls == 1
    stored = await _stored(redis_server, "wacid.N")
    assert (stored["state"], stored["end_reason"]) == ("ENDED", "worker a lost")


@pytest.fixture
async def backend() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@pytest.fixture
async def events(
    workers: dict[str, ClusterRouter], backend: Receiver
) -> AsyncIterator[dict[str, EventOutbox]]:
    """Each worker's events to ``backend``, wired as `gateway serve` wires them. WhatsApp
    answers no terminate here (the sandbox sends no webhook): a call.ended waits 0.2 s
    for its terminate record."""
    made = {}
    for name, router in workers.items():
        outbox = EventOutbox(
            router.calls.store,
            url=backend.url,
            secret=SECRET,
            terminate_wait=0.2,
        )
        router.calls.observers.append(outbox)
        router.node.reaper.events = outbox
        await outbox.start()
        made[name] = outbox
    try:
        yield made
    finally:
        for outbox in made.values():
            await outbox.aclose()


async def _delivered(events: dict[str, EventOutbox]) -> None:
    """Wait until no worker's outbox holds an event (each was delivered once)."""
    async with asyncio.timeout(20):
        while any([await o.store.outbox_next_due() is not None for o in events.values()]):
            await asyncio.sleep(0.05)


async def test_racing_reapers_send_the_backend_one_call_ended_with_the_reapers_end(
    redis_server: RedisServer,
    sandbox: CloudAPISandbox,
    workers: dict[str, ClusterRouter],
    events: dict[str, EventOutbox],
    backend: Receiver,
) -> None:
    a, b, c = workers["a"], workers["b"], workers["c"]
    call = await _live_call(a, "wacid.E")
    # a's call.started was stored in a's outbox, not delivered yet, when a died.
    await a.calls.store.outbox_add(make_event("call.started", call.record))
    await _lease_lapses(redis_server, "a")  # a is gone for good
    await asyncio.gather(b.node.reaper.reap_lost_workers(), c.node.reaper.reap_lost_workers())
    await wait_for(lambda: backend.of_type("call.ended", "wacid.E"))
    await _delivered(events)
    [ended] = backend.of_type("call.ended", "wacid.E")
    stored = await _stored(redis_server, "wacid.E")
    assert ended["id"] == event_id("call.ended", "wacid.E")  # what a would have sent
    assert (ended["call"]["state"], ended["call"]["end_reason"]) == ("ENDED", "worker a lost")
    assert ended["call"]["ended_at"] == stored["ended_at"]
    assert ended["call"]["accepted_at"] == call.record.accepted_at
    # a's undelivered call.started went out too (the reaper took over a's outbox), once.
    assert [e["id"] for e in backend.of_type("call.started", "wacid.E")] == [
        event_id("call.started", "wacid.E")
    ]
    assert backend.bad_signatures == 0
    assert b.node.reaper.reaped_calls + c.node.reaper.reaped_calls == 1
    assert [r.action for r in sandbox.requests].count("terminate") == 1


async def test_a_reaper_that_dies_midway_leaves_the_call_ended_to_the_next(
    redis_server: RedisServer,
    sandbox: CloudAPISandbox,
    workers: dict[str, ClusterRouter],
    events: dict[str, EventOutbox],
    backend: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # b ends a's call (terminate, record ENDED) and dies before its call.ended is
    # stored; when b's reaping lock expires, c ends what b left: one call.ended, with
    # the end b wrote, and no second terminate.
    a, b, c = workers["a"], workers["b"], workers["c"]
    await _live_call(a, "wacid.M")

    async def dies(kind: str, record: CallRecord) -> None:
        raise StoreError("Redis: connection lost")

    monkeypatch.setattr(events["b"], "add", dies)
    db = connect(redis_server.url)
    try:
        await db.delete(keys.lease("a"))
        with pytest.raises(StoreError):
            await b.node.reaper.reap_lost_workers()
        first = await _stored(redis_server, "wacid.M")
        assert (first["state"], first["end_reason"]) == ("ENDED", "worker a lost")
        await db.delete(keys.reaping("a"))  # b's lock expired
        await c.node.reaper.reap_lost_workers()
        assert await db.smembers(keys.worker_calls("a")) == set()
        assert not await db.hexists(keys.WORKERS, "a")
    finally:
        await db.aclose()
    await wait_for(lambda: backend.of_type("call.ended", "wacid.M"))
    await _delivered(events)
    [ended] = backend.of_type("call.ended", "wacid.M")
    assert ended["id"] == event_id("call.ended", "wacid.M")
    assert (ended["call"]["end_reason"], ended["call"]["ended_at"]) == (
        "worker a lost",
        first["ended_at"],
    )
    assert [r.action for r in sandbox.requests].count("terminate") == 1, "terminated again"
    assert (b.node.reaper.reaped_calls, c.node.reaper.reaped_calls) == (1, 0)


@pytest.mark.parametrize("learns_at", ["save", "renewal", "renewal while ending"])
async def test_a_stale_workers_call_ended_carries_the_end_redis_kept(
    redis_server: RedisServer,
    workers: dict[str, ClusterRouter],
    events: dict[str, EventOutbox],
    backend: Receiver,
    learns_at: str,
) -> None:
    # a stalls past its lease, b reaps it (and sends call.ended); a wakes up, learns
    # that its call ended elsewhere and ends it: a's record and its own call.ended say
    # what Redis and b's call.ended say, under the same id.
    a, b = workers["a"], workers["b"]
    call = await _live_call(a, "wacid.S")
    await _reap_a(a, b, redis_server)
    reaped = await _stored(redis_server, "wacid.S")
    if learns_at == "save":
        # WhatsApp's answer to the reaper's terminate reaches b: into the record.
        assert await b.deliver(_terminate("wacid.S"))
        call.record.statuses.append("ACCEPTED")  # a status came: a saves its copy
        await a.calls.ledger.save(call.record)  # a's copy takes the terminate record
    else:
        # An outbox that does not wait for WhatsApp's terminate record: a's call.ended
        # goes as a's copy of the record is when the call ends.
        events["a"].terminate_wait = 0
        goodbye = asyncio.Event()
        if learns_at == "renewal while ending":
            # The bot was hanging up (its goodbye still playing) when a woke up.
            call.end_hooks.append(goodbye.wait)
            call.end("the bot hung up", terminate=False)
            await asyncio.sleep(0)
            assert call.state is CallState.ENDING
        await a.node.renew()
        goodbye.set()
    await asyncio.wait_for(call.ended.wait(), 10)
    await a.calls.flush()
    await wait_for(lambda: len(backend.of_type("call.ended", "wacid.S")) == 2)
    await _delivered(events)
    sent = backend.of_type("call.ended", "wacid.S")
    assert len(sent) == 2  # b's and a's: one id, the backend keeps one
    assert {e["id"] for e in sent} == {event_id("call.ended", "wacid.S")}
    for event in sent:
        assert (event["call"]["end_reason"], event["call"]["ended_at"]) == (
            "worker a lost",
            reaped["ended_at"],
        ), event
    assert (call.record.end_reason, call.record.ended_at) == ("worker a lost", reaped["ended_at"])
    stored = await _stored(redis_server, "wacid.S")
    assert (stored["end_reason"], stored["ended_at"]) == ("worker a lost", reaped["ended_at"])
    # Counted when a ended its call because of it (not when it was ending already).
    assert a.node.ended_elsewhere_calls == (learns_at != "renewal while ending")


async def test_a_call_ended_waiting_for_whatsapps_terminate_outlives_its_worker(
    redis_server: RedisServer,
    workers: dict[str, ClusterRouter],
    events: dict[str, EventOutbox],
    backend: Receiver,
) -> None:
    # a hangs up its call, and its call.ended waits for WhatsApp's terminate record
    # (which never comes here); a dies meanwhile. The event was stored when the call
    # ended: b, which reaps a, delivers it when the wait would have ended.
    a, b = workers["a"], workers["b"]
    events["a"].terminate_wait = 0.3
    call = await _live_call(a, "wacid.W")
    await call.end("hung up through the API", terminate=True)
    await a.calls.flush()
    async with asyncio.timeout(10):
        while await a.calls.store.outbox_next_due() is None:
            await asyncio.sleep(0.02)
    for task in events["a"]._runner:  # a dies: nothing it holds in memory is written
        task.cancel()
    await _lease_lapses(redis_server, "a")
    await b.node.reaper.reap_lost_workers()
    assert b.node.reaper.reaped_calls == 0  # a's call had ended: only its event was left
    await wait_for(lambda: backend.of_type("call.ended", "wacid.W"))
    [ended] = backend.of_type("call.ended", "wacid.W")
    assert ended["id"] == event_id("call.ended", "wacid.W")
    assert (ended["call"]["state"], ended["call"]["end_reason"]) == (
        "ENDED",
        "hung up through the API",
    )
