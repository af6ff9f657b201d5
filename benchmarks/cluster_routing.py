"""What cluster mode adds to signaling: webhook -> the event on the worker that acts on it.

Two cluster workers (real WorkerNode + ClusterRouter, as ``gateway serve`` builds
them) on one real redis-server, in one process. For each kind of event it times,
over many events, from the webhook receiver handing the event to the router until
the owning worker's call manager gets it, and the CPU this process spent on it
(both workers and their Redis clients; redis-server's own CPU is printed apart).
Single mode's figure for the same step is a dict look-up and a queue put.

- new call: dedupe (SET NX), cluster cap check, XADD, read by a worker with room
  (XREADGROUP), claimed in one pipeline: what a user's call waits before answering;
- terminate to another worker: dedupe, owner look-up, XADD to the owner's inbox, XREAD;
- terminate on the owner: dedupe and owner look-up only;
- terminate after the call ended (b hung up) -> the worker it ended on: dedupe, owner
  look-up (none), record and ended-on look-up, XADD to that worker's inbox, XREAD.

    python benchmarks/cluster_routing.py [--events 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from gateway.calls import CallManager
from gateway.cluster import keys
from gateway.cluster.node import WorkerNode
from gateway.cluster.redis_server import RedisServer
from gateway.cluster.router import ClusterRouter
from gateway.events import CallConnect, CallTerminate, Direction, Event
from gateway.graph import GraphClient
from gateway.metrics import process_cpu_seconds
from gateway.records import CallRecord, CallState
from gateway.routing import LocalRouter


def _worker(redis_url: str, graph: GraphClient) -> tuple[ClusterRouter, CallManager]:
    calls = CallManager(graph, max_calls=10_000)
    node = WorkerNode(redis_url, calls, graph, lease_seconds=10)
    return ClusterRouter(node, calls, cluster_max_calls=100_000), calls


def _connect(i: int) -> CallConnect:
    return CallConnect(
        call_id=f"wacid.bench{i}",
        phone_number_id="1",
        from_="15550000001",
        to="15550783881",
        direction=Direction.USER_INITIATED,
        sdp_type="offer",
        sdp="v=0\r\n",
        timestamp=int(time.time()),
    )


def _terminate(call_id: str) -> CallTerminate:
    return CallTerminate(
        call_id=call_id,
        phone_number_id="1",
        from_="15550000001",
        to="15550783881",
        direction=Direction.USER_INITIATED,
        status="COMPLETED",
        timestamp=int(time.time()),
    )


def _redis_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _time(
    events: Sequence[Event],
    deliver: Callable[[Event], object],
    managers: list[CallManager],
) -> tuple[np.ndarray, float]:
    arrived = asyncio.Event()

    def record(event: Event) -> None:
        arrived.set()

    for calls in managers:
        calls.dispatch = record  # type: ignore[method-assign]
    latencies = []
    cpu = process_cpu_seconds()
    for event in events:
        arrived.clear()
        start = time.perf_counter()
        result = deliver(event)
        if asyncio.iscoroutine(result):
            await result
        await arrived.wait()
        latencies.append(time.perf_counter() - start)
    return np.array(latencies) * 1000, (process_cpu_seconds() - cpu) * 1000 / len(events)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()
    n = args.events
    server = RedisServer()
    await server.start()
    graph = GraphClient(base_url="http://127.0.0.1:9/v23.0", access_token="x", phone_number_id="1")
    a, a_calls = _worker(server.url, graph)
    b, b_calls = _worker(server.url, graph)
    await a.start()
    await b.start()
    local_calls = CallManager(graph)
    local = LocalRouter(local_calls)
    redis_pid = server._proc.pid if server._proc else 0
    rows = []
    try:
        connects = [_connect(i) for i in range(n)]
        single = await _time(connects, local.deliver, [local_calls])
        rows.append(("single mode: any event", *single))
        # Calls owned by b, so that a terminate through a must be handed over.
        for event in connects:
            async with b.redis.pipeline(transaction=False) as pipe:
                b.node.register(pipe, event.call_id)
                await pipe.execute()
        before = _redis_cpu(redis_pid)
        rows.append(
            (
                "new call -> a worker",
                *await _time([_connect(n + i) for i in range(n)], a.deliver, [a_calls, b_calls]),
            )
        )
        rows.append(
            (
                "terminate -> other worker",
                *await _time([_terminate(e.call_id) for e in connects], a.deliver, [b_calls]),
            )
        )
        more = [_connect(2 * n + i) for i in range(n)]
        for event in more:
            async with a.redis.pipeline(transaction=False) as pipe:
                a.node.register(pipe, event.call_id)
                await pipe.execute()
        rows.append(
            (
                "terminate -> same worker",
                *await _time([_terminate(e.call_id) for e in more], a.deliver, [a_calls]),
            )
        )
        # Calls that ended on b (it hung up): their records ENDED, no owner, ended on b.
        ended = [_connect(3 * n + i) for i in range(n)]
        for event in ended:
            record = CallRecord(event.call_id, Direction.USER_INITIATED, event.from_)
            record.state, record.ended_at = CallState.ENDED, time.time()
            async with b.redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.record(event.call_id), json.dumps(record.as_dict()))
                pipe.set(keys.ended_on(event.call_id), b.node.id, ex=keys.ENDED_ON_SECONDS)
                await pipe.execute()
        rows.append(
            (
                "terminate after end -> b",
                *await _time([_terminate(e.call_id) for e in ended], a.deliver, [b_calls]),
            )
        )
        redis_ms = (_redis_cpu(redis_pid) - before) * 1000 / (4 * n)
    finally:
        await a.aclose()
        await b.aclose()
        await graph.aclose()
        await server.aclose()
    print(f"{n} events each; one process holds both workers; {os.cpu_count()} cores")
    print(f"{'step':<28} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/event':>12}")
    for name, lat, cpu in rows:
        print(
            f"{name:<28} {np.percentile(lat, 50):>7.2f} {np.percentile(lat, 99):>7.2f} {cpu:>12.3f}"
        )
    print(f"redis-server CPU per cluster event: {redis_ms:.3f} ms")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
