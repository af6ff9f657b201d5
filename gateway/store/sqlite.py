"""The default store: one SQLite database under ``GATEWAY_DATA_DIR``, through aiosqlite.

The database runs in WAL mode with ``synchronous=FULL``: a commit is on disk when
it returns, so a journaled webhook survives a crash of the process or the machine.
Statements run on aiosqlite's own thread; one lock keeps each transaction whole,
so writes are applied in the order they were awaited.

One process owns a data dir at a time: :meth:`SQLiteStore.open` takes an exclusive
``flock`` on ``gateway.lock`` (released by the kernel when the process dies), so a
second gateway on the same dir fails at start-up instead of ending the first one's
calls as if they were orphans.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from ..errors import StoreError
from ..events import Event, PermissionReply, encode_event
from ..records import CallRecord, CallState
from .base import JournalEntry, OutboxEvent
from .codec import decode_event, dedupe_key

log = logging.getLogger(__name__)

DB_NAME = "gateway.sqlite3"
LOCK_NAME = "gateway.lock"

# Schema version N is reached by running MIGRATIONS[N - 1] on version N - 1.
# Append new steps; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE calls (
            call_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            ended_at REAL,
            record TEXT NOT NULL)""",
        "CREATE INDEX calls_created ON calls (created_at)",
        "CREATE INDEX calls_ended ON calls (ended_at)",
        "CREATE INDEX calls_live ON calls (state) WHERE state != 'ENDED'",
        "CREATE TABLE dedupe (key TEXT PRIMARY KEY, seen_at REAL NOT NULL) WITHOUT ROWID",
        "CREATE INDEX dedupe_seen ON dedupe (seen_at)",
        """CREATE TABLE journal (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            received_at REAL NOT NULL,
            event TEXT NOT NULL)""",
        """CREATE TABLE permission_replies (
            wa_id TEXT PRIMARY KEY,
            received_at REAL NOT NULL,
            reply TEXT NOT NULL)""",
    ),
    (
        """CREATE TABLE outbox (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            body BLOB NOT NULL,
            created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL)""",
        "CREATE INDEX outbox_due ON outbox (next_attempt_at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# SQLite's page cache, in KiB (a negative cache_size): SQLite's default, set here
# because the memory it bounds is real. Records and dedupe keys are kept for the
# retention, so the database grows about 1 KB per call and the cache with it until
# it holds this much; then it stays there (tests/test_faults_slow.py measures it).
CACHE_KIB = 2000


class SQLiteStore:
    """:class:`~gateway.store.base.Store` on SQLite in ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self._db: aiosqlite.Connection | None = None
        self._lock_fd: int | None = None
        self._tx = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Lock the data dir, open the database and bring its schema up to date."""
        if self._db is not None:
            return
        try:
            self._lock_fd = await asyncio.to_thread(self._lock_dir)
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            for pragma in (
                "journal_mode=WAL",
                "synchronous=FULL",
                "busy_timeout=5000",
                f"cache_size=-{CACHE_KIB}",
            ):
                await self._db.execute(f"PRAGMA {pragma}")
            await self._migrate()
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise StoreError(f"cannot open the store in {self.data_dir}: {exc}") from exc
        except BaseException:
            await self.close()
            raise
        log.info("store: %s (schema %d)", self.path, SCHEMA_VERSION)

    def _lock_dir(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"data dir {self.data_dir} is in use by another gateway process "
                "(set GATEWAY_DATA_DIR to a directory of its own)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    async def _migrate(self) -> None:
        db = self._conn
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, migrated_at REAL NOT NULL)"
        )
        async with db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {current}, newer than this gateway's "
                f"{SCHEMA_VERSION}: run the newer gateway, or point GATEWAY_DATA_DIR elsewhere"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            async with self._transaction() as db:
                for statement in MIGRATIONS[version - 1]:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_version (version, migrated_at) VALUES (?, ?)",
                    (version, time.time()),
                )
            log.info("store: migrated %s to schema version %d", self.path, version)

    async def close(self) -> None:
        """Close the database and release the data dir (idempotent)."""
        db, self._db = self._db, None
        if db is not None:
            try:
                await db.close()
            except sqlite3.Error:
                log.exception("store: closing %s failed", self.path)
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        # IMMEDIATE: take the write lock up front, so a transaction never fails halfway
        # for a lock another connection (e.g. an operator's sqlite3 shell) holds.
        async with self._tx:
            db = self._conn
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except (sqlite3.Error, ValueError) as exc:
                # ValueError: e.g. text sqlite cannot encode (a lone surrogate in an id).
                await _rollback(db)
                raise StoreError(f"store write failed: {exc}") from exc
            except BaseException:
                await _rollback(db)
                raise

    async def _write(self, sql: str, params: Sequence[object]) -> None:
        # One statement is a transaction of its own in autocommit mode: atomic, on
        # disk when it returns (synchronous=FULL), and it takes the write lock when
        # it starts (waiting up to busy_timeout), as BEGIN IMMEDIATE would. Without
        # BEGIN and COMMIT around it, it is one trip to aiosqlite's thread, not three
        # (each ~100 us of the event loop's CPU; a call saves its record 4 times).
        async with self._tx:
            try:
                await self._conn.execute(sql, params)
            except (sqlite3.Error, ValueError) as exc:
                raise StoreError(f"store write failed: {exc}") from exc

    async def _rows(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        async with self._tx:
            try:
                async with self._conn.execute(sql, params) as cur:
                    return list(await cur.fetchall())
            except (sqlite3.Error, ValueError) as exc:
                raise StoreError(f"store read failed: {exc}") from exc

    # --- webhook events ------------------------------------------------------------

    async def journal(self, events: Sequence[Event]) -> list[JournalEntry]:
        """Dedupe and journal in one transaction, committed to disk on return."""
        entries: list[JournalEntry] = []
        now = time.time()
        async with self._transaction() as db:
            for event in events:
                cur = await db.execute(
                    "INSERT OR IGNORE INTO dedupe (key, seen_at) VALUES (?, ?)",
                    (dedupe_key(event), now),
                )
                if cur.rowcount == 0:
                    continue  # seen before (this delivery or an earlier one)
                cur = await db.execute(
                    "INSERT INTO journal (received_at, event) VALUES (?, ?)",
                    (now, encode_event(event)),
                )
                entries.append(JournalEntry(str(cur.lastrowid), event, now))
        return entries

    async def mark_handled(self, entry_id: str) -> None:
        """Handled entries leave the journal (their dedupe key stays for the retention)."""
        await self._write("DELETE FROM journal WHERE id = ?", (int(entry_id),))

    async def unhandled(self) -> list[JournalEntry]:
        """Entries left by a process that died before handling them, oldest first."""
        entries = []
        for row in await self._rows("SELECT id, received_at, event FROM journal ORDER BY id"):
            try:
                event = decode_event(row[2])
            except StoreError as exc:
                log.error("store: journal entry %s skipped: %s", row[0], exc)
                continue
            entries.append(JournalEntry(str(row[0]), event, float(row[1])))
        return entries

    # --- call records ------------------------------------------------------------------

    async def save_call(self, record: CallRecord) -> None:
        """Upsert the record (as JSON; the indexed columns beside it)."""
        await self._write(
            "INSERT INTO calls (call_id, state, created_at, ended_at, record) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (call_id) DO UPDATE SET "
            "state = excluded.state, ended_at = excluded.ended_at, record = excluded.record",
            (
                record.call_id,
                str(record.state),
                record.created_at,
                record.ended_at,
                json.dumps(record.as_dict()),
            ),
        )

    async def get_call(self, call_id: str) -> CallRecord | None:
        """One record, or None."""
        rows = await self._rows("SELECT record FROM calls WHERE call_id = ?", (call_id,))
        return _record(rows[0][0]) if rows else None

    async def recent_calls(self, limit: int) -> list[CallRecord]:
        """Newest first."""
        rows = await self._rows(
            "SELECT record FROM calls ORDER BY created_at DESC LIMIT ?", (max(0, limit),)
        )
        return [_record(row[0]) for row in rows]

    async def live_calls(self) -> list[CallRecord]:
        """Calls not ENDED (the data dir lock makes them this process's or a dead one's)."""
        rows = await self._rows(
            "SELECT record FROM calls WHERE state != ? ORDER BY created_at", (CallState.ENDED,)
        )
        return [_record(row[0]) for row in rows]

    # --- call permissions -----------------------------------------------------------------

    async def save_permission_reply(self, reply: PermissionReply) -> None:
        """Keep the latest reply per user."""
        await self._write(
            "INSERT INTO permission_replies (wa_id, received_at, reply) VALUES (?, ?, ?) "
            "ON CONFLICT (wa_id) DO UPDATE SET "
            "received_at = excluded.received_at, reply = excluded.reply",
            (reply.from_, time.time(), encode_event(reply)),
        )

    async def permission_reply(self, wa_id: str) -> PermissionReply | None:
        """The latest reply, or None."""
        rows = await self._rows("SELECT reply FROM permission_replies WHERE wa_id = ?", (wa_id,))
        if not rows:
            return None
        reply = decode_event(rows[0][0])
        return reply if isinstance(reply, PermissionReply) else None

    # --- outbox -------------------------------------------------------------------------------

    async def outbox_add(self, event: OutboxEvent) -> None:
        """Insert the event, or replace the one of the same id; committed to disk on return."""
        await self._write(
            "INSERT OR REPLACE INTO outbox "
            "(id, type, body, created_at, attempts, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                event.id,
                event.type,
                event.body,
                event.created_at,
                event.attempts,
                event.next_attempt_at,
            ),
        )

    async def outbox_due(self, now: float, limit: int) -> list[OutboxEvent]:
        """Due events, soonest first."""
        rows = await self._rows(
            "SELECT id, type, body, created_at, attempts, next_attempt_at FROM outbox "
            "WHERE next_attempt_at <= ? ORDER BY next_attempt_at, created_at LIMIT ?",
            (now, max(0, limit)),
        )
        return [
            OutboxEvent(str(r[0]), str(r[1]), bytes(r[2]), float(r[3]), int(r[4]), float(r[5]))
            for r in rows
        ]

    async def outbox_next_due(self) -> float | None:
        """The earliest next attempt."""
        rows = await self._rows("SELECT MIN(next_attempt_at) FROM outbox")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def outbox_retry(self, event_id: str, attempts: int, next_attempt_at: float) -> None:
        """Note the failed attempt."""
        await self._write(
            "UPDATE outbox SET attempts = ?, next_attempt_at = ? WHERE id = ?",
            (attempts, next_attempt_at, event_id),
        )

    async def outbox_remove(self, event_id: str) -> None:
        """Delete the event."""
        await self._write("DELETE FROM outbox WHERE id = ?", (event_id,))

    # --- retention ---------------------------------------------------------------------------

    async def prune(self, before: float) -> int:
        """Delete what is older than ``before``; live calls stay."""
        removed = 0
        async with self._transaction() as db:
            for sql in (
                "DELETE FROM calls WHERE state = 'ENDED' AND COALESCE(ended_at, created_at) < ?",
                "DELETE FROM dedupe WHERE seen_at < ?",
                "DELETE FROM journal WHERE received_at < ?",
                "DELETE FROM permission_replies WHERE received_at < ?",
            ):
                cur = await db.execute(sql, (before,))
                removed += max(cur.rowcount, 0)
        return removed


def _record(text: str) -> CallRecord:
    try:
        return CallRecord.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"unreadable call record: {exc!r}") from None


async def _rollback(db: aiosqlite.Connection) -> None:
    try:
        await db.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction was open (BEGIN itself failed)
