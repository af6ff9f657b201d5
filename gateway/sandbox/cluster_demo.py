"""``gateway cluster --sandbox``: a local cluster that needs no WhatsApp account.

Starts a private Redis, the Cloud API sandbox (playing Meta and the callers) and
``gateway serve --workers N`` pointed at it; simulated users call through the
cluster's one URL, each call is answered by some worker, and is hung up through
the API of another one. Then the cluster keeps serving until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Mapping

import httpx

from ..cluster.redis_server import RedisServer, free_port
from ..cluster.supervisor import run_workers
from ..errors import GatewayError
from .cloud import CloudAPISandbox
from .user import SimulatedUser


async def run_sandbox_cluster(
    workers: int, *, calls: int = 4, port: int | None = None, env: Mapping[str, str] | None = None
) -> int:
    """Run the demo; returns the supervisor's exit code."""
    redis = RedisServer()
    await redis.start()
    sandbox = CloudAPISandbox(
        webhook_url="", app_secret=secrets.token_hex(16), access_token=secrets.token_hex(16)
    )
    await sandbox.start()
    api_key = secrets.token_hex(8)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    sandbox.webhook_url = f"{url}/webhook"
    worker_env = {
        **(env if env is not None else os.environ),
        "WHATSAPP_ACCESS_TOKEN": sandbox.access_token,
        "WHATSAPP_APP_SECRET": sandbox.app_secret,
        "WHATSAPP_VERIFY_TOKEN": secrets.token_hex(8),
        "WHATSAPP_PHONE_NUMBER_ID": sandbox.phone_number_id,
        "WHATSAPP_GRAPH_URL": sandbox.graph_url,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_MEDIA_ADDRESSES": "127.0.0.1",
        "GATEWAY_API_KEY": api_key,
        "GATEWAY_REDIS_URL": redis.url,
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    print(f"cluster: Redis at {redis.url}, sandbox Graph API at {sandbox.graph_url}", flush=True)
    supervisor = asyncio.create_task(run_workers(workers, worker_env))
    try:
        await _wait_for_workers(url, workers, supervisor)
        print(f"cluster: {workers} workers serving {url}/webhook (one port, SO_REUSEPORT)")
        await _demo_calls(sandbox, url, api_key, calls)
        print(f"cluster: serving {url} until Ctrl-C (GET {url}/cluster shows the workers)")
        return await supervisor
    finally:
        if not supervisor.done():
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        await sandbox.aclose()
        await redis.aclose()


async def _wait_for_workers(url: str, count: int, supervisor: asyncio.Task[int]) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            if supervisor.done():
                raise GatewayError("the workers exited at start; see their log lines above")
            try:
                answer = await http.get(f"{url}/cluster")
                if answer.status_code == 200 and len(answer.json()["workers"]) >= count:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise GatewayError("the workers did not come up within 60 s")


async def _demo_calls(sandbox: CloudAPISandbox, url: str, api_key: str, count: int) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    users = [SimulatedUser(sandbox, f"1555000{i:04d}", f"Caller {i}") for i in range(count)]
    placed = await asyncio.gather(*(u.place_call(inbound=False) for u in users))
    async with asyncio.timeout(30):
        await asyncio.gather(*(c.media_up.wait() for c in placed))
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=20) as api:
        overview = (await api.get("/cluster")).json()
        print(f"cluster: {overview['live_calls']} live calls over the workers:")
        for worker, load in overview["workers"].items():
            print(f"  worker {worker}: {load['calls']} call(s)")
        for call in placed:
            answer = await api.delete(f"/calls/{call.call_id}")
            state = answer.json().get("state") if answer.status_code == 200 else answer.text
            print(f"  {call.user.name}: hung up through the API -> {state}")
    async with asyncio.timeout(10):
        await asyncio.gather(*(c.ended.wait() for c in placed))
