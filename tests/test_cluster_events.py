"""The business backend hears every call end in a cluster: real `gateway serve` workers
on a real Redis, one of them killed (SIGKILL) or frozen (SIGSTOP) mid-call, and a
backend that checks each event's signature."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.cluster import keys
from gateway.outbox import event_id

from .backend import SECRET, Receiver, wait_for
from .cluster_stack import LEASE_SECONDS, Cluster, actions, dump, start_cluster


@contextlib.asynccontextmanager
async def _cluster_with_backend(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Receiver]]:
    """Two workers sending their events to a backend."""
    backend = Receiver()
    await backend.start()
    try:
        cluster = await start_cluster(
            tmp_path, workers=2, GATEWAY_EVENTS_URL=backend.url, GATEWAY_EVENTS_SECRET=SECRET
        )
        try:
            yield cluster, backend
        finally:
            await cluster.aclose()
    finally:
        await backend.stop()


async def _all_delivered(cluster: Cluster) -> None:
    """Wait until no worker's outbox (a lost one's included) holds an event."""
    async with cluster.db as db, asyncio.timeout(30):
        while True:
            outboxes = [k async for k in db.scan_iter(match=keys.outbox("*"))]
            if not sum([await db.hlen(k) for k in outboxes]):
                return
            await asyncio.sleep(0.1)


async def test_a_killed_workers_call_gets_one_call_ended_from_the_reaper(tmp_path: Path) -> None:
    async with _cluster_with_backend(tmp_path) as (cluster, backend):
        call = await cluster.answered_call()
        await wait_for(lambda: backend.of_type("call.answered", call.call_id))
        owner_id = await cluster.owner(call.call_id)
        owner = await cluster.worker_of(call.call_id)
        await cluster.stop_worker(owner, signal.SIGKILL)  # gone for good, mid-call
        await asyncio.wait_for(call.ended.wait(), LEASE_SECONDS + 10)  # the reaper's terminate
        await wait_for(lambda: backend.of_type("call.ended", call.call_id), 30)
        await _all_delivered(cluster)
        record = await cluster.wait_record(call.call_id, state="ENDED")
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


@pytest.mark.slow
async def test_a_stalled_workers_own_call_ended_says_what_the_reapers_says(
    tmp_path: Path,
) -> None:
    # The owner freezes past its lease (SIGSTOP), is reaped, and wakes up: the
    # call.ended it sends itself is the reaper's, under the same id, with the same end.
    # (Whichever way it learns it here, its record takes the stored end before its
    # event goes; the ways in which it would not without the end it is told are
    # test_cluster_ending's stale-worker tests.)
    async with _cluster_with_backend(tmp_path) as (cluster, backend):
        call = await cluster.answered_call()
        await wait_for(lambda: backend.of_type("call.answered", call.call_id))
        owner_id = await cluster.owner(call.call_id)
        owner = await cluster.worker_of(call.call_id)
        cluster.remove(owner)  # nothing reaches it while it is stopped
        owner.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.wait_for(call.ended.wait(), LEASE_SECONDS + 10)
            await wait_for(lambda: backend.of_type("call.ended", call.call_id), 30)
        finally:
            owner.proc.send_signal(signal.SIGCONT)
            cluster.workers.append(owner)
            cluster.balancer.backends.append(owner.url)
        await wait_for(lambda: len(backend.of_type("call.ended", call.call_id)) == 2, 30)
        await _all_delivered(cluster)
        record = await cluster.wait_record(call.call_id, state="ENDED")
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{owner.url}/metrics")).text
    assert "gateway_cluster_ended_elsewhere_total 1.0" in metrics  # it ended its copy
    sent = backend.of_type("call.ended", call.call_id)
    assert len(sent) == 2 and backend.bad_signatures == 0, dump(sent)  # the reaper's, its own
    assert {e["id"] for e in sent} == {event_id("call.ended", call.call_id)}
    assert record["end_reason"] == f"worker {owner_id} lost", dump(record)
    for event in sent:
        for name in ("state", "end_reason", "ended_at", "terminate_status"):
            assert event["call"][name] == record[name], (name, dump(event), dump(record))
