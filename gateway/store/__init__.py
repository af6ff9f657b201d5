"""Durable state behind one small interface: :class:`Store`.

``SQLiteStore`` (the default, a database file under ``GATEWAY_DATA_DIR``) keeps
state across restarts; ``MemoryStore`` keeps it for the life of one process.
"""

from .base import JournalEntry, OutboxEvent, Store
from .memory import MemoryStore
from .sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = ["SCHEMA_VERSION", "JournalEntry", "MemoryStore", "OutboxEvent", "SQLiteStore", "Store"]
