"""What the durable store costs per call: the writes one call's life makes, on SQLite
and in memory, side by side.

Run: ``.venv/bin/python benchmarks/store_per_call.py [CALLS]``. For each call it does
what the gateway does: journal the connect webhook, save the record (NEW), mark the
event handled, save it ACTIVE, journal the terminate webhook, save the terminate
record, mark it handled, save it ENDED; then the same for a second delivery of each
webhook (deduplicated). Prints process CPU (all threads: the event loop plus
aiosqlite's) and wall time per call. None of this is per packet.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

from gateway.events import CallConnect, CallTerminate, Direction
from gateway.records import CallRecord, CallState
from gateway.store import MemoryStore, SQLiteStore, Store

SDP = "v=0\r\n" + "a=candidate:1 1 udp 2122260223 10.0.0.1 50000 typ host\r\n" * 20


async def one_call(store: Store, i: int) -> None:
    call_id = f"wacid.bench{i}"
    connect = CallConnect(
        call_id, "1", "1555", "1555", Direction.USER_INITIATED, "offer", SDP, int(time.time())
    )
    terminate = CallTerminate(
        call_id, "1", "1555", "1555", Direction.USER_INITIATED, "COMPLETED", 0, 1, 2, 1
    )
    (entry,) = await store.journal([connect])
    record = CallRecord(call_id, Direction.USER_INITIATED, "1555")
    await store.save_call(record)
    await store.mark_handled(entry.id)
    record.state = CallState.ACTIVE
    await store.save_call(record)
    assert await store.journal([connect]) == []  # Meta's retry
    (entry,) = await store.journal([terminate])
    record.terminate_status, record.duration = "COMPLETED", 1
    await store.save_call(record)
    await store.mark_handled(entry.id)
    record.state, record.ended_at = CallState.ENDED, time.time()
    await store.save_call(record)


async def measure(store: Store, calls: int) -> tuple[float, float]:
    await store.open()
    try:
        await one_call(store, -1)  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(calls):
            await one_call(store, i)
        return (
            (time.process_time() - cpu) / calls * 1000,
            (time.perf_counter() - wall) / calls * 1000,
        )
    finally:
        await store.close()


async def main(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_cpu, sqlite_wall = await measure(SQLiteStore(tmp), calls)
    memory_cpu, memory_wall = await measure(MemoryStore(), calls)
    print(f"store cost per call ({calls} calls, 9 store operations each, one transaction each)")
    print(f"{'store':<10} {'CPU ms/call':>12} {'wall ms/call':>13}")
    print(f"{'sqlite':<10} {sqlite_cpu:>12.2f} {sqlite_wall:>13.2f}")
    print(f"{'memory':<10} {memory_cpu:>12.2f} {memory_wall:>13.2f}")
    print(f"sqlite/memory CPU ratio: {sqlite_cpu / max(memory_cpu, 1e-9):.0f}x")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
