"""The cluster with a real Redis and three worker processes behind a random balancer.

Webhooks reach a random worker (as behind a load balancer), and so do API requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter

import httpx
import pytest

from gateway.cluster.redis_server import free_port
from gateway.sandbox import payloads
from gateway.webhooks import sign

from .cluster_stack import Cluster, actions, dump
from .conftest import APP_SECRET

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_calls_are_answered_once_and_spread_over_workers(cluster: Cluster) -> None:
    calls = await asyncio.gather(*(cluster.answered_call() for _ in range(6)))
    owners = Counter([await cluster.owner(c.call_id) for c in calls])
    for call in calls:
        assert actions(cluster, call.call_id) == ["pre_accept", "accept"]
        record = await cluster.wait_record(call.call_id, state="ACTIVE")
        assert record["direction"] == "USER_INITIATED"
    # The consumer group hands new calls to idle workers in turn.
    assert None not in owners and len(owners) >= 2, owners
    # GET /calls on any worker lists every live call of the cluster.
    async with cluster.api() as api:
        listed = {r["call_id"] for r in (await api.get("/calls")).json()["active"]}
    assert {c.call_id for c in calls} <= listed
    await asyncio.gather(*(c.hang_up() for c in calls))
    for call in calls:
        record = await cluster.wait_record(
            call.call_id, state="ENDED", terminate_status="COMPLETED"
        )
        assert record["end_reason"] == "terminated by WhatsApp (completed)"
        assert actions(cluster, call.call_id) == ["pre_accept", "accept"], "no terminate of ours"


async def test_terminate_through_another_worker_ends_the_call(cluster: Cluster) -> None:
    call = await cluster.answered_call()
    owner = await cluster.worker_of(call.call_id)
    other = next(w for w in cluster.workers if w is not owner)
    cluster.balancer.backends.remove(owner.url)  # the terminate must reach another worker
    try:
        await call.hang_up()
    finally:
        cluster.balancer.backends.append(owner.url)
    record = await cluster.wait_record(call.call_id, seconds=10, state="ENDED")
    assert record["terminate_status"] == "COMPLETED", dump(record)
    assert (await cluster.record(call.call_id, other))["state"] == "ENDED"


async def test_a_delivery_retried_to_two_workers_is_handled_once(cluster: Cluster) -> None:
    call = await cluster.answered_call()
    body = json.dumps(
        payloads.envelope(
            [
                payloads.terminate(
                    call_id=call.call_id,
                    from_=call.user.wa_id,
                    to=cluster.sandbox.business_number,
                    business=cluster.sandbox.business_number,
                    phone_number_id=cluster.sandbox.phone_number_id,
                    direction="USER_INITIATED",
                    status="COMPLETED",
                    start_time=None,
                    end_time=None,
                )
            ]
        )
    ).encode()
    headers = {"X-Hub-Signature-256": sign(body, APP_SECRET), "Content-Type": "application/json"}
    a, b = cluster.workers[:2]
    async with httpx.AsyncClient(timeout=20) as http:
        answers = await asyncio.gather(
            *(http.post(f"{w.url}/webhook", content=body, headers=headers) for w in (a, b))
        )
    assert [r.status_code for r in answers] == [200, 200]
    assert sorted(r.json()["received"] for r in answers) == [0, 1]
    await cluster.wait_record(call.call_id, state="ENDED", terminate_status="COMPLETED")
    await call.close()


async def test_delete_through_another_worker_hangs_up(cluster: Cluster) -> None:
    call = await cluster.answered_call()
    owner = await cluster.worker_of(call.call_id)
    other = next(w for w in cluster.workers if w is not owner)
    async with cluster.api(other) as api:
        response = await api.delete(f"/calls/{call.call_id}")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "ENDED"
    assert response.json()["end_reason"] == "hung up through the API"
    assert actions(cluster, call.call_id) == ["pre_accept", "accept", "terminate"]
    await asyncio.wait_for(call.ended.wait(), 10)
    async with cluster.api(other) as api:
        again = await api.delete(f"/calls/{call.call_id}")
    assert again.status_code == 404


async def test_business_call_placed_on_one_worker_is_routed_everywhere(cluster: Cluster) -> None:
    user = cluster.user()
    cluster.sandbox.permissions.grant(user.wa_id)
    async with cluster.api() as api:
        response = await api.post("/calls", json={"to": user.wa_id})
    assert response.status_code == 201, response.text
    call_id = response.json()["call_id"]
    # RINGING, the SDP answer and ACCEPTED came through the balancer to any worker.
    record = await cluster.wait_record(call_id, seconds=20, state="ACTIVE")
    assert "RINGING" in record["statuses"], dump(record)
    user_call = cluster.sandbox.calls[call_id]
    async with cluster.api() as api:
        assert (await api.delete(f"/calls/{call_id}")).status_code == 200
    await cluster.wait_record(call_id, state="ENDED")
    await user_call.close()


async def test_readyz_and_healthz_name_the_worker(cluster: Cluster) -> None:
    async with httpx.AsyncClient() as http:
        for worker in cluster.workers:
            ready = await http.get(f"{worker.url}/readyz")
            assert ready.status_code == 200
            assert ready.json()["mode"] == "cluster" and ready.json()["redis"] == "up"


async def test_serve_workers_share_one_port(cluster: Cluster) -> None:
    # `gateway serve --workers 2`: two processes on one port (SO_REUSEPORT), one cluster.
    port = free_port()
    env = {**os.environ, **cluster.env, "GATEWAY_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--workers", "2",
        env=env, stdout=asyncio.subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient() as http, asyncio.timeout(60):
            while True:
                try:
                    workers = (await http.get(f"http://127.0.0.1:{port}/cluster")).json()["workers"]
                    pids = {w["pid"] for w in workers.values()}
                    if len(pids - {w.pid for w in cluster.workers}) == 2:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            for pid in [*_children(proc.pid), proc.pid]:  # leave nothing running
                os.kill(pid, signal.SIGKILL)
            await proc.wait()
            raise
    assert code == 0


async def test_a_permission_reply_is_known_to_every_worker(cluster: Cluster) -> None:
    user = cluster.user()
    answer = await cluster.sandbox.deliver(
        payloads.permission_reply(
            user=user.wa_id,
            user_name=user.name,
            business=cluster.sandbox.business_number,
            phone_number_id=cluster.sandbox.phone_number_id,
            context_id="wamid.cluster",
            accept=True,
            permanent=True,
        )
    )
    assert answer.status_code == 200, answer.text
    for worker in cluster.workers:
        async with cluster.api(worker) as api, asyncio.timeout(10):
            while True:
                reply = (await api.get(f"/permissions/{user.wa_id}")).json()["last_reply"]
                if reply is not None:
                    break
                await asyncio.sleep(0.05)
        assert reply["accepted"] is True and reply["permanent"] is True


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the supervisor's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found
