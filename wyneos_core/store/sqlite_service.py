"""The SQLite state file's tables of service mode (``wyneos serve``): node keys, enrolment
tokens and the customers they give, agents' acknowledgements (plain and node-signed) and
their refusal reports. Part of ``StateStore`` (``wyneos_core.store.sqlite``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["ServiceTables"]


class ServiceTables:
    """``StateStore``'s service-mode tables."""

    #: given by ``StateStore`` (``wyneos_core.store.sqlite``), which these tables are part of
    conn: sqlite3.Connection
    _rollback: Callable[[], None]

    # -- service mode (wyneos serve): node keys, enrolment tokens, agent acknowledgements --

    _SERVICE_SCHEMA = """
    CREATE TABLE IF NOT EXISTS node_keys (
        node_id TEXT PRIMARY KEY,
        public_key BLOB NOT NULL,
        fingerprint TEXT NOT NULL,
        enrolled_at REAL NOT NULL,
        revoked_at REAL,
        seq INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS node_keys_by_seq ON node_keys (seq);
    CREATE TABLE IF NOT EXISTS enrol_tokens (
        token_hash TEXT PRIMARY KEY,
        node_id TEXT,
        uses_left INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS enrol_token_customers (
        token_hash TEXT PRIMARY KEY,
        customer TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS node_customers (
        node_id TEXT PRIMARY KEY,
        customer TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS action_acks (
        action_id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        status TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        acked_at REAL NOT NULL,
        PRIMARY KEY (action_id, node_id)
    );
    """

    def ensure_service_tables(self) -> None:
        """Create the service-mode tables if missing (idempotent)."""
        self.conn.executescript(self._SERVICE_SCHEMA)

    def add_enrol_token(self, token_hash: str, node_id: str | None, uses: int, expires_at: float, now: float,
                        customer: str | None = None) -> None:
        """Store a token (its hash); ``customer``: the customer of the nodes it enrols
        (the operator's word, as the config's ``nodes[].metadata.customer``)."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT INTO enrol_tokens VALUES (?,?,?,?,?)", (token_hash, node_id, uses, expires_at, now))
            if customer is not None:
                c.execute("INSERT INTO enrol_token_customers VALUES (?,?)", (token_hash, customer))
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def node_customers(self) -> dict[str, str]:
        """The customers enrolment tokens gave to nodes: ``{node_id: customer}``."""
        return dict(self.conn.execute("SELECT node_id, customer FROM node_customers"))

    def enrol_tokens(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT token_hash, node_id, uses_left, expires_at, created_at FROM enrol_tokens ORDER BY created_at")
        return [{"token_hash": t, "node_id": n, "uses_left": u, "expires_at": e, "created_at": c}
                for t, n, u, e, c in rows]

    def revoke_enrol_token(self, token_hash: str) -> bool:
        """Delete the enrolment token with this hash (no node can enrol with it any more)."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            gone = c.execute("DELETE FROM enrol_tokens WHERE token_hash = ?", (token_hash,)).rowcount
            c.execute("DELETE FROM enrol_token_customers WHERE token_hash = ?", (token_hash,))
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return gone > 0

    def put_node_key(self, node_id: str, public_key: bytes, fingerprint: str, now: float) -> None:
        """Enrol (or re-enrol, clearing a revocation) ``node_id`` with ``public_key``."""
        self.conn.execute(
            "INSERT INTO node_keys VALUES (?,?,?,?,NULL,(SELECT COALESCE(MAX(seq),0)+1 FROM node_keys)) "
            "ON CONFLICT(node_id) DO UPDATE SET public_key=excluded.public_key, fingerprint=excluded.fingerprint, "
            "enrolled_at=excluded.enrolled_at, revoked_at=NULL, seq=excluded.seq",
            (node_id, public_key, fingerprint, now),
        )

    def revoke_node_key(self, node_id: str, now: float) -> bool:
        cur = self.conn.execute(
            "UPDATE node_keys SET revoked_at=?, seq=(SELECT COALESCE(MAX(seq),0)+1 FROM node_keys) "
            "WHERE node_id=? AND revoked_at IS NULL", (now, node_id))
        return cur.rowcount > 0

    def node_keys(self, since_seq: int = 0) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT node_id, public_key, fingerprint, enrolled_at, revoked_at, seq FROM node_keys "
            "WHERE seq > ? ORDER BY seq", (since_seq,))
        return [{"node_id": n, "public_key": bytes(k), "fingerprint": f, "enrolled_at": e, "revoked_at": r, "seq": s}
                for n, k, f, e, r, s in rows]

    def record_action_ack(self, action_id: str, node_id: str, status: str, detail: str, now: float) -> None:
        self.conn.execute(
            "INSERT INTO action_acks VALUES (?,?,?,?,?) ON CONFLICT(action_id, node_id) DO UPDATE SET "
            "status=excluded.status, detail=excluded.detail, acked_at=excluded.acked_at",
            (action_id, node_id, status, detail[:500], now))

    def action_acks(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT action_id, node_id, status, detail, acked_at FROM action_acks ORDER BY acked_at")
        return [{"action_id": a, "node_id": n, "status": s, "detail": d, "acked_at": t} for a, n, s, d, t in rows]

    # -- service mode: node-signed acknowledgements and agents' refusal reports -------------

    _SIGNING_SCHEMA = """
CREATE TABLE IF NOT EXISTS signed_acks (
    action_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    issued_at INTEGER,
    envelope TEXT NOT NULL,
    acked_at REAL NOT NULL,
    PRIMARY KEY (action_id, node_id)
);
CREATE TABLE IF NOT EXISTS action_refusals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL,
    reported_at REAL NOT NULL,
    reason TEXT NOT NULL,
    action_id TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
"""

    def ensure_signing_tables(self) -> None:
        """Create the tables of signed acknowledgements and refusals if missing (idempotent)."""
        self.conn.executescript(self._SIGNING_SCHEMA)

    def put_signed_ack(self, action_id: str, node_id: str, issued_at: int | None, envelope: dict[str, Any],
                       now: float) -> None:
        """Keep the node-signed acknowledgement of ``action_id`` (the latest per node)."""
        self.conn.execute(
            "INSERT INTO signed_acks VALUES (?,?,?,?,?) ON CONFLICT(action_id, node_id) DO UPDATE SET "
            "issued_at=excluded.issued_at, envelope=excluded.envelope, acked_at=excluded.acked_at",
            (action_id, node_id, issued_at, json.dumps(envelope, sort_keys=True), now))

    def signed_ack(self, action_id: str, node_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT envelope FROM signed_acks WHERE action_id=? AND node_id=?",
                                (action_id, node_id)).fetchone()
        return None if row is None else json.loads(row[0])

    def prune_signed_acks(self) -> None:
        """Forget signed acknowledgements whose acknowledgement is gone (pruned)."""
        self.conn.execute("DELETE FROM signed_acks WHERE NOT EXISTS (SELECT 1 FROM action_acks a WHERE "
                          "a.action_id = signed_acks.action_id AND a.node_id = signed_acks.node_id)")

    def add_action_refusals(self, node_id: str, now: float, refusals: Iterable[tuple[str, str | None, str]],
                            keep: int) -> None:
        """Record ``(reason, action_id, detail)`` reports of ``node_id``; keep the latest ``keep``."""
        self.conn.executemany("INSERT INTO action_refusals (node_id, reported_at, reason, action_id, detail) "
                              "VALUES (?,?,?,?,?)", ((node_id, now, r, a, d) for r, a, d in refusals))
        self.conn.execute("DELETE FROM action_refusals WHERE seq <= (SELECT MAX(seq) FROM action_refusals) - ?",
                          (keep,))

    def recent_action_refusals(self, limit: int = 200) -> list[dict[str, Any]]:
        """The ``limit`` latest refusal reports, oldest first."""
        rows = self.conn.execute("SELECT node_id, reported_at, reason, action_id, detail FROM action_refusals "
                                 "ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [{"node_id": n, "reported_at": t, "reason": r, "action_id": a, "detail": d}
                for n, t, r, a, d in reversed(rows)]

    # -- service mode: bounded reads and retention of agent acknowledgements ----------------

    def recent_action_acks(self, limit: int = 500) -> list[dict[str, Any]]:
        """The ``limit`` latest acknowledgements, oldest first."""
        rows = self.conn.execute(
            "SELECT action_id, node_id, status, detail, acked_at FROM action_acks ORDER BY acked_at DESC LIMIT ?",
            (limit,))
        return [{"action_id": a, "node_id": n, "status": s, "detail": d, "acked_at": t}
                for a, n, s, d, t in reversed(rows.fetchall())]

    def recent_action_events(self, since_tick: int, limit: int = 500) -> list[dict[str, Any]]:
        """At most ``limit`` lifecycle events from ``since_tick`` on (the latest), oldest first."""
        rows = self.conn.execute(
            "SELECT tick, action_id, state, detail FROM action_events WHERE tick >= ? ORDER BY seq DESC LIMIT ?",
            (since_tick, limit))
        return [{"tick": t, "action_id": a, "state": s, "detail": d} for t, a, s, d in reversed(rows.fetchall())]

    def action_acks_of(self, node_id: str, action_ids: Iterable[str]) -> set[str]:
        """Which of ``action_ids`` ``node_id`` has acknowledged."""
        wanted = list(dict.fromkeys(action_ids))
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.conn.execute(
                f"SELECT action_id FROM action_acks WHERE node_id = ? AND action_id IN ({marks})",  # noqa: S608
                (node_id, *chunk)))
        return found

    def prune_action_acks(self, tick: int, retention: int) -> int:
        """Forget acknowledgements of actions that ended ``retention`` ticks ago or more
        (or are no longer stored); those of actions in force stay. The number removed."""
        cur = self.conn.execute(
            "DELETE FROM action_acks WHERE action_id NOT IN "
            "(SELECT id FROM actions WHERE state = 'in_force' OR last_tick > ?)", (tick - retention,))
        return cur.rowcount

    def _spend_token(self, token_hash: str, node_id: str, now: float) -> str | None:
        """Inside a transaction: spend one use of a token for ``node_id``; None on
        success, else why the token is refused."""
        c = self.conn
        row = c.execute("SELECT node_id, uses_left, expires_at FROM enrol_tokens WHERE token_hash=?",
                        (token_hash,)).fetchone()
        if row is None:
            return "unknown enrolment token"
        if row[0] is not None and row[0] != node_id:
            return f"the enrolment token is for node {row[0]!r}"
        if row[1] <= 0:
            return "the enrolment token is used up"
        if row[2] < now:
            return "the enrolment token has expired"
        c.execute("UPDATE enrol_tokens SET uses_left = uses_left - 1 WHERE token_hash=?", (token_hash,))
        return None

    def enrol_with_token(self, token_hash: str | None, node_id: str, public_key: bytes, fingerprint: str,
                         now: float, join: Callable[[str | None], None] | None = None) -> str | None:
        """Spend one use of a token (``None``: no token needed) and store the node's key,
        in one transaction: both or neither. None on success, else why the token is refused.
        A token made with a customer gives the node that customer (kept in ``node_customers``).

        ``join(customer)`` runs inside the transaction once the token is verified, before
        the commit (``customer``: the token's, or None): it is where the caller changes
        its memory, and if it raises, nothing is written. (If the commit itself fails, the
        caller undoes what ``join`` did.)
        """
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            reason = None if token_hash is None else self._spend_token(token_hash, node_id, now)
            if reason is not None:
                self._rollback()
                return reason
            self.put_node_key(node_id, public_key, fingerprint, now)
            row = None if token_hash is None else c.execute(
                "SELECT customer FROM enrol_token_customers WHERE token_hash=?", (token_hash,)).fetchone()
            if row is not None:
                c.execute("INSERT OR REPLACE INTO node_customers VALUES (?,?)", (node_id, row[0]))
            if join is not None:
                join(None if row is None else row[0])
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return None
