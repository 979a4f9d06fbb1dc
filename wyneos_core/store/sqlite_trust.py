"""The SQLite state file's trust tables (builtin trust plugin, docs/trust.md): a row per
node ever scored, and the trust engine's slots kept as chunks (``TrustChunkTable``).
Part of ``StateStore`` (``wyneos_core.store.sqlite``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wyneos_core.store.sqlite import StateStore

__all__ = ["TrustChunkTable", "TrustTables"]


class TrustTables:
    """``StateStore``'s trust tables: one row per node ever scored, kept when the node is
    deregistered, so that a node re-enrolling (same id, or the same key fingerprint) starts
    from its old evidence."""

    #: given by ``StateStore`` (``wyneos_core.store.sqlite``), which these tables are part of
    conn: sqlite3.Connection
    _rollback: Callable[[], None]

    _TRUST_SCHEMA = """
    CREATE TABLE IF NOT EXISTS trust (
        node_id TEXT PRIMARY KEY,
        fingerprint TEXT,
        trust REAL NOT NULL,
        tier TEXT NOT NULL,
        admission TEXT NOT NULL,
        admission_reason TEXT,
        joined_tick INTEGER NOT NULL,
        evidence TEXT NOT NULL,
        updated_tick INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS trust_chunks (
        first_slot INTEGER PRIMARY KEY,
        ids TEXT NOT NULL,
        extra TEXT NOT NULL,
        records BLOB NOT NULL,
        layout TEXT NOT NULL,
        updated_tick INTEGER NOT NULL
    );
    """

    def ensure_trust_tables(self) -> None:
        """Create the trust table if missing (idempotent)."""
        if not getattr(self, "_trust_ready", False):
            self.conn.executescript(self._TRUST_SCHEMA)
            self._trust_ready = True

    def write_trust(self, rows: Iterable[tuple]) -> int:
        """Upsert trust rows ``(node_id, fingerprint, trust, tier, admission,
        admission_reason, joined_tick, evidence, updated_tick)`` in one transaction."""
        self.ensure_trust_tables()
        rows = list(rows)
        if not rows:
            return 0
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany(
                "INSERT INTO trust VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(node_id) DO UPDATE SET "
                "fingerprint=COALESCE(excluded.fingerprint, trust.fingerprint), trust=excluded.trust, "
                "tier=excluded.tier, admission=excluded.admission, admission_reason=excluded.admission_reason, "
                "joined_tick=excluded.joined_tick, evidence=excluded.evidence, updated_tick=excluded.updated_tick",
                rows,
            )
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return len(rows)

    def trust_rows(self, chunks: bool = True) -> list[dict[str, Any]]:
        """Every stored trust row, as a dict per node (with ``chunks``, the nodes of the
        chunks too: ``trust_chunk_table``)."""
        self.ensure_trust_tables()
        cols = ("node_id", "fingerprint", "trust", "tier", "admission", "admission_reason", "joined_tick",
                "evidence", "updated_tick")
        rows = [dict(zip(cols, row)) for row in self.conn.execute(f"SELECT {', '.join(cols)} FROM trust")]
        if chunks:
            from wyneos_core.trust.persist import chunk_rows

            rows += chunk_rows(self.trust_chunk_table.read())
        return rows

    @property
    def trust_chunk_table(self) -> TrustChunkTable:
        """The trust engine's slots kept as chunks (``wyneos_core.trust.persist``): a
        capability of this backend, not of every store (etcd keeps a row per node)."""
        return TrustChunkTable(self)


class TrustChunkTable:
    """Table ``trust_chunks`` of a SQLite state file: chunks of the trust engine's slots
    ``(first_slot, ids, extra, records, layout, tick)`` as ``trust.persist`` makes them."""

    __slots__ = ("store",)

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def write(self, chunks: Iterable[tuple], replace: bool = False) -> int:
        """Upsert ``chunks`` in one transaction; with ``replace``, they are the whole
        state: every other chunk and per-node trust row goes."""
        store = self.store
        store.ensure_trust_tables()
        written = 0

        def counted() -> Iterable[tuple]:  # made and written a chunk at a time
            nonlocal written
            for first, ids, extra, data, layout, tick in chunks:
                written += 1
                yield first, ids, extra, sqlite3.Binary(data), layout, tick

        c = store.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if replace:
                c.execute("DELETE FROM trust_chunks")
                c.execute("DELETE FROM trust")
            c.executemany("INSERT OR REPLACE INTO trust_chunks VALUES (?,?,?,?,?,?)", counted())
            c.execute("COMMIT")
        except BaseException:
            store._rollback()
            raise
        return written

    def read(self) -> list[tuple]:
        """Every stored chunk, as written."""
        store = self.store
        store.ensure_trust_tables()
        if store.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'trust_chunks'").fetchone() is None:
            return []  # a file of an earlier version, read only
        return [(first, ids, extra, bytes(data), layout, tick) for first, ids, extra, data, layout, tick in
                store.conn.execute("SELECT first_slot, ids, extra, records, layout, updated_tick FROM trust_chunks "
                                   "ORDER BY first_slot")]
