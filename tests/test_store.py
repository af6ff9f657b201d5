"""The store contract, on every implementation, and what only SQLite promises (durability,
schema migration, one owner per data dir)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.cluster.redis_server import RedisServer
from gateway.cluster.store import RedisStore
from gateway.errors import StoreError
from gateway.events import (
    CallConnect,
    CallErrorInfo,
    CallStatus,
    CallTerminate,
    Contact,
    Direction,
    Event,
    PermissionReply,
    encode_event,
)
from gateway.records import CallRecord, CallState
from gateway.store import SCHEMA_VERSION, MemoryStore, OutboxEvent, SQLiteStore, Store
from gateway.store.codec import decode_event

PNID = "106540352242922"


def connect(call_id: str = "wacid.A") -> CallConnect:
    return CallConnect(
        call_id=call_id,
        phone_number_id=PNID,
        from_="15551230001",
        to="15550783881",
        direction=Direction.USER_INITIATED,
        sdp_type="offer",
        sdp="v=0\r\n",
        timestamp=1700000000,
        contact=Contact(wa_id="15551230001", name="Ana"),
    )


def terminate(call_id: str = "wacid.A") -> CallTerminate:
    return CallTerminate(
        call_id=call_id,
        phone_number_id=PNID,
        from_="15551230001",
        to="15550783881",
        direction=Direction.USER_INITIATED,
        status="FAILED",
        timestamp=1700000060,
        start_time=1700000001,
        end_time=1700000059,
        duration=58,
        biz_opaque_callback_data="ticket=1",
        errors=(CallErrorInfo(code=138004, message="Connection error", details="ICE"),),
    )


def reply(wa_id: str = "15551230002", accepted: bool = True) -> PermissionReply:
    return PermissionReply(
        phone_number_id=PNID,
        from_=wa_id,
        accepted=accepted,
        permanent=True,
        timestamp=int(time.time()),
        context_id="wamid.X",
    )


@pytest.fixture(params=["sqlite", "memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    redis = None
    s: Store
    if request.param == "redis":  # a cluster worker's store, on a real redis-server
        redis = RedisServer()
        await redis.start()
        s = RedisStore(redis.url, "worker-1")
    else:
        s = SQLiteStore(tmp_path) if request.param == "sqlite" else MemoryStore()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        if redis is not None:
            await redis.aclose()


@pytest.mark.parametrize(
    "event",
    [
        connect(),
        terminate(),
        CallStatus("wacid.B", PNID, "RINGING", 1700000000, "15551230001", "cb"),
        reply(),
    ],
)
def test_events_survive_the_codec(event: Event) -> None:
    assert decode_event(encode_event(event)) == event


def test_an_event_is_encoded_without_copying_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # dataclasses.asdict deep-copied every field of every journalled event.
    import copy

    def no_copy(value: object, memo: object = None) -> object:
        raise AssertionError("deepcopy called")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    # The journal's text is the same as before (stored entries stay readable).
    assert encode_event(terminate()) == (
        '{"type":"terminate","call_id":"wacid.A","phone_number_id":"106540352242922",'
        '"from_":"15551230001","to":"15550783881","direction":"USER_INITIATED",'
        '"status":"FAILED","timestamp":1700000060,"start_time":1700000001,'
        '"end_time":1700000059,"duration":58,"biz_opaque_callback_data":"ticket=1",'
        '"errors":[{"code":138004,"message":"Connection error","details":"ICE"}]}'
    )
    assert '"contact":{"wa_id":"15551230001","name":"Ana"}' in encode_event(connect())


def test_codec_refuses_junk_with_a_store_error() -> None:
    with pytest.raises(StoreError, match="unreadable journal entry"):
        decode_event('{"type": "nonsense"}')


async def test_journal_keeps_new_events_and_drops_duplicates(store: Store) -> None:
    first = await store.journal([connect(), terminate()])
    assert [e.event for e in first] == [connect(), terminate()]
    # A retried delivery, and a duplicate inside one delivery: only the new one is kept.
    again = await store.journal([connect(), terminate("wacid.C"), terminate("wacid.C")])
    assert [e.event for e in again] == [terminate("wacid.C")]
    assert len({e.id for e in [*first, *again]}) == 3
    unhandled = [e.event for e in await store.unhandled()]
    assert unhandled == [connect(), terminate(), terminate("wacid.C")]


async def test_handled_events_are_not_replayed_but_stay_deduplicated(store: Store) -> None:
    (entry,) = await store.journal([connect()])
    await store.mark_handled(entry.id)
    assert await store.unhandled() == []
    assert await store.journal([connect()]) == []


async def test_concurrent_deliveries_of_one_event_journal_it_once(store: Store) -> None:
    results = await asyncio.gather(*(store.journal([connect("wacid.R")]) for _ in range(20)))
    assert sum(len(r) for r in results) == 1


async def test_call_records_round_trip_with_the_terminate_record(store: Store) -> None:
    record = CallRecord(call_id="wacid.A", direction=Direction.USER_INITIATED, peer="1555")
    await store.save_call(record)
    assert [r.call_id for r in await store.live_calls()] == ["wacid.A"]
    record.state = CallState.ENDED
    record.ended_at = time.time()
    record.end_reason = "terminated by WhatsApp (failed)"
    record.terminate_status, record.duration = "FAILED", 58
    record.start_time, record.end_time = 1700000001, 1700000059
    record.errors = [{"code": 138004, "message": "Connection error", "details": "ICE"}]
    record.biz_opaque_callback_data = "ticket=1"
    record.statuses = ["RINGING"]
    await store.save_call(record)
    assert await store.get_call("wacid.A") == record
    assert await store.live_calls() == []
    assert await store.get_call("wacid.nope") is None


async def test_recent_calls_newest_first(store: Store) -> None:
    for i in range(5):
        r = CallRecord(f"wacid.{i}", Direction.USER_INITIATED, "1555", created_at=1000.0 + i)
        await store.save_call(r)
    assert [r.call_id for r in await store.recent_calls(3)] == ["wacid.4", "wacid.3", "wacid.2"]


async def test_permission_replies_keep_the_latest(store: Store) -> None:
    await store.save_permission_reply(reply(accepted=True))
    await store.save_permission_reply(reply(accepted=False))
    kept = await store.permission_reply("15551230002")
    assert kept is not None and kept.accepted is False
    assert await store.permission_reply("15559999999") is None


async def test_prune_forgets_old_items_but_keeps_live_calls(store: Store) -> None:
    old = CallRecord("wacid.old", Direction.USER_INITIATED, "1", created_at=100.0)
    old.state, old.ended_at = CallState.ENDED, 200.0
    live = CallRecord("wacid.live", Direction.USER_INITIATED, "1", created_at=100.0)
    new = CallRecord("wacid.new", Direction.USER_INITIATED, "1")
    new.state, new.ended_at = CallState.ENDED, time.time()
    for r in (old, live, new):
        await store.save_call(r)
    await store.journal([connect()])
    await store.save_permission_reply(reply())
    # Everything journaled or replied so far is older than "now + 1 s".
    removed = await store.prune(time.time() + 1)
    assert await store.get_call("wacid.old") is None
    assert await store.get_call("wacid.new") is None
    assert await store.get_call("wacid.live") is not None
    assert await store.unhandled() == []
    assert await store.permission_reply("15551230002") is None
    # The dedupe key went too: the event would be taken again.
    assert len(await store.journal([connect()])) == 1
    assert removed == 2 + 1 + 1 + 1  # calls, dedupe key, journal entry, reply


async def test_prune_keeps_what_is_within_retention(store: Store) -> None:
    record = CallRecord("wacid.A", Direction.USER_INITIATED, "1")
    record.state, record.ended_at = CallState.ENDED, time.time()
    await store.save_call(record)
    await store.journal([connect()])
    assert await store.prune(time.time() - 86400) == 0
    assert await store.get_call("wacid.A") is not None
    assert await store.journal([connect()]) == []


# --- SQLite only ----------------------------------------------------------------------


async def test_sqlite_keeps_everything_across_reopen(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    await store.open()
    entries = await store.journal([connect(), terminate()])
    await store.mark_handled(entries[0].id)
    await store.save_call(CallRecord("wacid.A", Direction.USER_INITIATED, "1555"))
    saved = reply()  # its timestamp is now: build it once, or a second may tick between
    await store.save_permission_reply(saved)
    await store.close()

    again = SQLiteStore(tmp_path)
    await again.open()
    try:
        assert [e.event for e in await again.unhandled()] == [terminate()]
        assert await again.journal([connect()]) == []
        assert [r.call_id for r in await again.live_calls()] == ["wacid.A"]
        assert await again.permission_reply("15551230002") == saved
    finally:
        await again.close()


async def test_sqlite_creates_and_records_the_schema_version(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "deeper" / "dir")
    await store.open()
    await store.close()
    with sqlite3.connect(store.path) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM schema_version")]
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert mode == "wal"
    # Opening again migrates nothing.
    await store.open()
    await store.close()
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    await store.open()
    await store.close()
    with sqlite3.connect(store.path) as db:
        db.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this gateway"):
        await SQLiteStore(tmp_path).open()


async def test_sqlite_data_dir_has_one_owner(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path)
    await first.open()
    try:
        with pytest.raises(StoreError, match="in use by another gateway process"):
            await SQLiteStore(tmp_path).open()
    finally:
        await first.close()
    second = SQLiteStore(tmp_path)
    await second.open()  # released on close
    await second.close()


async def test_sqlite_unusable_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open the store"):
        await SQLiteStore(blocker / "data").open()


async def test_closed_store_refuses_with_a_store_error(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    with pytest.raises(StoreError, match="not open"):
        await store.journal([connect()])


async def test_outbox_keeps_events_until_removed(store: Store) -> None:
    early = OutboxEvent("evt_1", "call.started", b'{"a":1}', 100.0, 0, 100.0)
    late = OutboxEvent("evt_2", "call.ended", b'{"b":2}', 101.0, 0, 101.0)
    await store.outbox_add(late)
    await store.outbox_add(early)
    assert await store.outbox_next_due() == 100.0
    assert await store.outbox_due(100.5, 10) == [early]
    assert await store.outbox_due(200.0, 10) == [early, late]
    assert await store.outbox_due(200.0, 1) == [early]
    await store.outbox_retry("evt_1", 1, 150.0)
    assert await store.outbox_due(120.0, 10) == [late]
    retried = (await store.outbox_due(200.0, 10))[1]
    assert retried.attempts == 1 and retried.next_attempt_at == 150.0 and retried.body == b'{"a":1}'
    await store.outbox_remove("evt_1")
    await store.outbox_remove("evt_2")
    await store.outbox_remove("evt_2")  # twice is fine
    assert await store.outbox_next_due() is None and await store.outbox_due(1e12, 10) == []


async def test_outbox_replaces_an_event_of_the_same_id(store: Store) -> None:
    # A call.ended stored ahead of WhatsApp's terminate record, due later, is replaced
    # by the one sent with it (same id, due now): one event, the newer one.
    held = OutboxEvent("evt_1", "call.ended", b'{"held":1}', 100.0, 0, 120.0)
    final = OutboxEvent("evt_1", "call.ended", b'{"final":1}', 105.0, 0, 105.0)
    await store.outbox_add(held)
    assert await store.outbox_due(110.0, 10) == []
    await store.outbox_add(final)
    assert await store.outbox_due(110.0, 10) == [final]
    assert await store.outbox_due(1e12, 10) == [final]


async def test_sqlite_single_writes_are_one_trip_committed_on_return(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    await store.open()
    try:
        conn = store._conn
        trips: list[str] = []
        execute = conn.execute

        def counting(sql: str, parameters: object = None) -> object:
            trips.append(sql.split()[0])
            return execute(sql, parameters)  # type: ignore[arg-type]

        conn.execute = counting  # type: ignore[method-assign]
        record = CallRecord("wacid.A", Direction.USER_INITIATED, "1555")
        await store.save_call(record)
        entries = await store.journal([connect()])
        await store.mark_handled(entries[0].id)
        # One statement, one trip (no BEGIN/COMMIT around it); the journal stays a transaction.
        assert trips == ["INSERT", "BEGIN", "INSERT", "INSERT", "COMMIT", "DELETE"]
        # Committed when it returns: another connection sees it, no transaction is left open.
        assert not conn.in_transaction
        with sqlite3.connect(store.path) as other:
            assert other.execute("SELECT call_id FROM calls").fetchall() == [("wacid.A",)]
            assert other.execute("SELECT COUNT(*) FROM journal").fetchone() == (0,)
    finally:
        await store.close()


async def test_sqlite_single_write_errors_and_lock_waits(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    await store.open()
    try:
        # Text SQLite cannot encode: a StoreError, nothing left half-done.
        with pytest.raises(StoreError, match="store write failed"):
            await store.save_call(CallRecord("wacid.\ud800", Direction.USER_INITIATED, "1555"))
        assert not store._conn.in_transaction
        # Another connection (an operator's shell) holds the write lock: the write waits
        # for it (busy_timeout) instead of failing, and lands once it is released.
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(
            store.save_call(CallRecord("wacid.B", Direction.USER_INITIATED, "1555"))
        )
        await asyncio.sleep(0.3)
        assert not write.done()
        other.execute("COMMIT")
        other.close()
        await write
        assert [r.call_id for r in await store.live_calls()] == ["wacid.B"]
    finally:
        await store.close()
