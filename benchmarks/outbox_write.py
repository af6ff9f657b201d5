"""What storing a call.ended ahead of WhatsApp's terminate record costs: one more
outbox write per call the gateway hangs up itself (``gateway.outbox``: the held
event, replaced by the one sent after the wait).

Run: ``.venv/bin/python benchmarks/outbox_write.py [EVENTS]``. For each store (SQLite
as one process keeps it, the cluster's Redis on a private redis-server, memory) it
writes EVENTS call.ended events of a real record's size, each twice (held, then
replaced), as the outbox does, and prints this process's CPU and the wall time per
write, building the event included (the JSON of the record: memory's row is that
alone). redis-server's own CPU is not counted. Nothing here runs per packet.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from dataclasses import replace

from gateway.cluster.redis_server import RedisServer
from gateway.cluster.store import RedisStore
from gateway.events import Direction
from gateway.outbox import make_event
from gateway.records import CallRecord, CallState
from gateway.store import MemoryStore, SQLiteStore, Store


def _record(i: int) -> CallRecord:
    record = CallRecord(f"wacid.bench{i}", Direction.USER_INITIATED, "15551230001")
    record.state, record.ended_at, record.end_reason = CallState.ENDED, time.time(), "bot hung up"
    record.statuses = ["RINGING", "ACCEPTED"]
    return record


async def measure(store: Store, events: int) -> tuple[float, float]:
    """CPU and wall ms per outbox write (a held event and its replacement per call)."""
    await store.open()
    try:
        records = [_record(i) for i in range(events)]
        cpu, wall = time.process_time(), time.perf_counter()
        for record in records:
            held = make_event("call.ended", record)
            await store.outbox_add(replace(held, next_attempt_at=held.created_at + 20))
            await store.outbox_add(make_event("call.ended", record))
        writes = 2 * events
        return (
            (time.process_time() - cpu) / writes * 1000,
            (time.perf_counter() - wall) / writes * 1000,
        )
    finally:
        await store.close()


async def main(events: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("sqlite", *await measure(SQLiteStore(tmp), events)))
    redis = RedisServer()
    await redis.start()
    try:
        rows.append(("redis", *await measure(RedisStore(redis.url, "bench"), events)))
    finally:
        await redis.aclose()
    rows.append(("memory", *await measure(MemoryStore(), events)))
    print(f"outbox write of a call.ended ({events} calls, 2 writes each: held, then replaced)")
    print(f"{'store':<8} {'CPU ms/write':>13} {'wall ms/write':>14}")
    for name, cpu, wall in rows:
        print(f"{name:<8} {cpu:>13.3f} {wall:>14.3f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 500))
