"""The cluster when workers stop, die, and Redis goes away: real processes, real Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.cluster import keys
from gateway.sandbox import payloads
from gateway.sandbox.user import UserCall
from gateway.webhooks import sign

from .cluster_stack import LEASE_SECONDS, Cluster, Worker, actions, dump
from .conftest import APP_SECRET

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


@pytest.fixture(autouse=True)
def _keep_logs_on_failure(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[None]:
    # pytest deletes the cluster's temporary directory: a failure keeps a copy of the logs.
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for path in cluster.keep_logs(request.node.name):
            print(f"worker log kept: {path}")


async def _calls_on_one_worker(cluster: Cluster, n: int = 3) -> tuple[Worker, list[UserCall]]:
    """Answered calls, and the worker that owns at least one of them."""
    calls = await asyncio.gather(*(cluster.answered_call() for _ in range(n)))
    by_worker: dict[int, list[UserCall]] = {}
    for call in calls:
        by_worker.setdefault((await cluster.worker_of(call.call_id)).pid, []).append(call)
    pid = max(by_worker, key=lambda p: len(by_worker[p]))
    worker = next(w for w in cluster.workers if w.pid == pid)
    return worker, by_worker[pid]


def _terminate_payload(cluster: Cluster, call: UserCall) -> dict[str, object]:
    return payloads.terminate(
        call_id=call.call_id,
        from_=call.user.wa_id,
        to=cluster.sandbox.business_number,
        business=cluster.sandbox.business_number,
        phone_number_id=cluster.sandbox.phone_number_id,
        direction="USER_INITIATED",
        status="COMPLETED",
    )


async def test_sigterm_drains_calls_then_exits_zero(cluster: Cluster) -> None:
    worker, mine = await _calls_on_one_worker(cluster)
    worker.proc.send_signal(signal.SIGTERM)
    async with httpx.AsyncClient() as http, asyncio.timeout(10):
        while (await http.get(f"{worker.url}/readyz")).status_code != 503:
            await asyncio.sleep(0.05)
        assert (await http.get(f"{worker.url}/readyz")).json()["status"] == "draining"
        assert (await http.get(f"{worker.url}/healthz")).status_code == 200
    # A new call meanwhile goes to a worker that is not draining.
    fresh = await cluster.answered_call()
    assert await cluster.worker_of(fresh.call_id) is not worker
    # The draining worker's calls run on, and it still routes webhooks.
    await asyncio.sleep(1.0)
    assert worker.proc.returncode is None
    for call in mine:
        assert not call.ended.is_set()
        assert (await cluster.record(call.call_id, worker))["state"] == "ACTIVE"
    for call in mine:
        await call.hang_up()  # via the balancer: maybe the draining worker, maybe not
    await worker.exits_zero(20)
    cluster.remove(worker)
    for call in mine:
        record = await cluster.wait_record(call.call_id, state="ENDED")
        assert record["terminate_status"] == "COMPLETED", dump(record)
        assert actions(cluster, call.call_id) == ["pre_accept", "accept"]  # we never hung up
    await fresh.hang_up()
    await cluster.add_worker()


async def test_second_sigterm_ends_every_call_now(cluster: Cluster) -> None:
    worker, mine = await _calls_on_one_worker(cluster)
    worker.proc.send_signal(signal.SIGTERM)
    async with httpx.AsyncClient() as http, asyncio.timeout(10):
        while (await http.get(f"{worker.url}/readyz")).status_code != 503:
            await asyncio.sleep(0.05)
    worker.proc.send_signal(signal.SIGTERM)
    await worker.exits_zero(20)
    cluster.remove(worker)
    for call in mine:
        assert actions(cluster, call.call_id)[-1] == "terminate"
        await asyncio.wait_for(call.ended.wait(), 10)
        record = await cluster.wait_record(call.call_id, state="ENDED")
        assert record["end_reason"] == "gateway shutting down", dump(record)
    await asyncio.gather(*(c.hang_up() for c in list(cluster.sandbox.calls.values())))
    await cluster.add_worker()


async def test_second_sigterm_with_webhooks_still_arriving_exits_zero(cluster: Cluster) -> None:
    # WhatsApp's terminate webhooks for the calls a closing worker ends arrive while it
    # closes. Twice that kept a worker alive: a delivery whose body came after its
    # headers (aiohttp drops it once shutting down; the runner waited 60 s for it), and
    # the call manager's inbox, cancelled inside a redis-py pipeline that swallowed it.
    # Each round: the second SIGTERM while four clients post webhooks to the worker.
    for _ in range(3):
        worker, mine = await _calls_on_one_worker(cluster)
        worker.proc.send_signal(signal.SIGTERM)
        await worker.draining()
        bodies = [
            json.dumps(payloads.envelope([_terminate_payload(cluster, c)])).encode() for c in mine
        ]

        async def post_until_gone(bodies: list[bytes] = bodies, url: str = worker.url) -> None:
            async with httpx.AsyncClient(timeout=60) as http:
                while True:
                    for body in bodies:
                        headers = {"X-Hub-Signature-256": sign(body, APP_SECRET)}
                        try:
                            await http.post(f"{url}/webhook", content=body, headers=headers)
                        except httpx.HTTPError:
                            return  # it stopped listening

        posting = [asyncio.create_task(post_until_gone()) for _ in range(4)]
        await asyncio.sleep(0.05)
        worker.proc.send_signal(signal.SIGTERM)
        try:
            await worker.exits_zero(20)
        finally:
            for task in posting:
                task.cancel()
            await asyncio.gather(*posting, return_exceptions=True)
        cluster.remove(worker)
        await asyncio.gather(*(c.hang_up() for c in list(cluster.sandbox.calls.values())))
        await cluster.add_worker()


async def test_sigkill_ends_the_lost_workers_calls_within_the_lease(cluster: Cluster) -> None:
    worker, mine = await _calls_on_one_worker(cluster)
    killed_at = time.monotonic()
    await cluster.stop_worker(worker, signal.SIGKILL)
    ended_after = []
    for call in mine:
        await asyncio.wait_for(call.ended.wait(), LEASE_SECONDS + 10)
        ended_after.append(time.monotonic() - killed_at)
        assert actions(cluster, call.call_id)[-1] == "terminate"
        record = await cluster.wait_record(call.call_id, state="ENDED")
        assert record["end_reason"].startswith("worker ") and "lost" in record["end_reason"]
    print(f"terminate after SIGKILL: {max(ended_after):.2f} s (lease {LEASE_SECONDS} s)")
    await asyncio.gather(*(c.hang_up() for c in list(cluster.sandbox.calls.values())))
    await cluster.add_worker()


async def test_redis_restarted_empty_mid_run(cluster: Cluster) -> None:
    calls = await asyncio.gather(*(cluster.answered_call() for _ in range(3)))
    first = calls[0]
    await cluster.redis.stop(kill=True)
    # Webhooks that need Redis get a 503, so WhatsApp delivers them again.
    answer = await cluster.sandbox.deliver(_terminate_payload(cluster, first))
    assert answer.status_code == 503, answer.text
    await asyncio.sleep(1.0)
    for call in calls:  # media and bots run on without Redis
        assert not call.ended.is_set() and call.pc.connectionState == "connected"
    await cluster.redis.start()  # same port, no data
    # The workers reconnect by themselves and re-register their calls.
    async with asyncio.timeout(20):
        while None in [await cluster.owner(c.call_id) for c in calls]:
            await asyncio.sleep(0.1)
    # Meta's retry of the refused terminate now ends the call; routing works again.
    answer = await cluster.sandbox.deliver(_terminate_payload(cluster, first))
    assert answer.status_code == 200, answer.text
    await cluster.wait_record(first.call_id, state="ENDED", terminate_status="COMPLETED")
    await first.close()
    for call in calls[1:]:
        await call.hang_up()
        await cluster.wait_record(call.call_id, state="ENDED", terminate_status="COMPLETED")
    # New calls are answered again, once.
    fresh = await cluster.answered_call()
    assert actions(cluster, fresh.call_id) == ["pre_accept", "accept"]
    await fresh.hang_up()
    logs = "\n".join(w.log.read_text() for w in cluster.workers)
    assert "Redis unreachable" in logs and "Redis reachable again" in logs


async def test_a_worker_stalled_past_its_lease_ends_the_calls_it_lost(cluster: Cluster) -> None:
    # The worker freezes (SIGSTOP: a stalled VM or event loop) past its lease: another
    # worker takes it for lost and ends its calls. It then wakes up: it must neither
    # revive those calls (records, owners) nor keep them up, nor terminate them again.
    worker, mine = await _calls_on_one_worker(cluster)
    worker_id = await cluster.owner(mine[0].call_id)
    cluster.remove(worker)  # nothing reaches it while it is stopped
    worker.proc.send_signal(signal.SIGSTOP)
    try:
        for call in mine:
            await asyncio.wait_for(call.ended.wait(), LEASE_SECONDS + 10)
            reaped = await cluster.wait_record(call.call_id, state="ENDED")
            assert reaped["end_reason"] == f"worker {worker_id} lost", dump(reaped)
    finally:
        worker.proc.send_signal(signal.SIGCONT)
        cluster.workers.append(worker)
        cluster.balancer.backends.append(worker.url)
    async with httpx.AsyncClient() as http, asyncio.timeout(60):
        while True:  # the calls it holds, as it publishes them
            load = (await http.get(f"{worker.url}/cluster")).json()["workers"][worker_id]
            if load["calls"] == 0:
                break
            await asyncio.sleep(0.1)
        metrics = (await http.get(f"{worker.url}/metrics")).text
    async with cluster.db as db:
        for call in mine:
            assert await db.hget(keys.OWNERS, call.call_id) is None, "registered again"
            assert not await db.sismember(keys.LIVE, call.call_id)
    for call in mine:
        record = await cluster.wait_record(call.call_id, state="ENDED")
        assert record["end_reason"] == f"worker {worker_id} lost", dump(record)
        terminates = [
            r
            for r in cluster.sandbox.requests
            if r.action == "terminate" and (r.body or {}).get("call_id") == call.call_id
        ]
        assert len(terminates) == 1, terminates  # the reaper's
    # Ended because it learnt that it lost them, not by a watchdog.
    assert f"gateway_cluster_ended_elsewhere_total {float(len(mine))}" in metrics, metrics
