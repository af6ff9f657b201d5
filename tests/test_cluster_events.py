"""The business backend hears every call end in a cluster: real `gateway serve` workers
on a real Redis, one of them killed (SIGKILL) mid-call, and a backend that checks each
event's signature."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from gateway.cluster import keys
from gateway.outbox import event_id

from .backend import SECRET, Receiver, wait_for
from .cluster_stack import LEASE_SECONDS, Cluster, actions, dump, start_cluster


async def _undelivered(cluster: Cluster) -> int:
    """Events left in any worker's outbox (the killed one's too)."""
    async with cluster.db as db:
        outboxes = [k async for k in db.scan_iter(match=keys.outbox("*"))]
        return sum([await db.hlen(k) for k in outboxes])


async def test_a_killed_workers_call_gets_one_call_ended_from_the_reaper(tmp_path: Path) -> None:
    backend = Receiver()
    await backend.start()
    cluster = await start_cluster(
        tmp_path, workers=2, GATEWAY_EVENTS_URL=backend.url, GATEWAY_EVENTS_SECRET=SECRET
    )
    try:
        call = await cluster.answered_call()
        await wait_for(lambda: backend.of_type("call.answered", call.call_id))
        owner_id = await cluster.owner(call.call_id)
        owner = await cluster.worker_of(call.call_id)
        await cluster.stop_worker(owner, signal.SIGKILL)  # gone for good, mid-call
        await asyncio.wait_for(call.ended.wait(), LEASE_SECONDS + 10)  # the reaper's terminate
        await wait_for(lambda: backend.of_type("call.ended", call.call_id), 30)
        async with asyncio.timeout(20):
            while await _undelivered(cluster):
                await asyncio.sleep(0.1)
        record = await cluster.wait_record(call.call_id, state="ENDED")
    finally:
        await cluster.aclose()
        await backend.stop()
    assert backend.bad_signatures == 0
    for kind in ("call.started", "call.answered", "call.ended"):
        sent = backend.of_type(kind, call.call_id)
        assert [e["id"] for e in sent] == [event_id(kind, call.call_id)], dump(sent)
    ended = backend.of_type("call.ended", call.call_id)[0]["call"]
    assert ended["end_reason"] == f"worker {owner_id} lost", dump(ended)
    assert actions(cluster, call.call_id)[-1] == "terminate"
    # What Redis keeps, WhatsApp's terminate record (its answer to the reaper's) included.
    for name in ("state", "end_reason", "ended_at", "terminate_status", "duration"):
        assert ended[name] == record[name], (name, dump(ended), dump(record))
    assert ended["terminate_status"] is not None, dump(ended)
