"""The embedded state store: one SQLite file in WAL mode.

``StateStore`` holds decisions, the action lifecycle, node membership and tick history
(this module), the delivery outcomes of actions, and, from the modules beside it, the
tables of service mode (``sqlite_service``) and of trust (``sqlite_trust``). Each tick's
writes are one transaction, so a crash loses at most the tick in flight, never a
committed decision. It registers itself as the ``sqlite`` backend of
``wyneos_core.store.api``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wyneos_core.model import Node, NodeStatus
from wyneos_core.store.api import StoreError, register_backend
from wyneos_core.store.rows import (
    ENCODE_SORTED,
    ENCODE_SORTED_TEXT,
    action_row_problem,
    encode_each,
    json_problem,
    node_row_problem,
    node_rows,
    sorted_json,
)
from wyneos_core.store.sqlite_service import ServiceTables
from wyneos_core.store.sqlite_trust import TrustTables

if TYPE_CHECKING:
    from wyneos_core.registry import Registry

__all__ = ["SCHEMA_VERSION", "WAL_CHECKPOINT_PAGES", "StateStore"]

SCHEMA_VERSION = 1

#: pages of write-ahead log between checkpoints (64 MiB of 4 KiB pages at most on disk)
WAL_CHECKPOINT_PAGES = 16384

#: node ids never restored (the orchestrator's own place in the mesh)
_RESERVED_IDS = frozenset({"orchestrator"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    last_seen REAL,
    load REAL,
    metadata TEXT NOT NULL,
    licence_ref TEXT,
    fingerprint TEXT,
    registered_at REAL NOT NULL,
    isolated INTEGER NOT NULL DEFAULT 0,
    updated_tick INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ticks (
    tick INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    duration_ms REAL NOT NULL,
    summary TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS actions (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    target TEXT NOT NULL,
    origin TEXT NOT NULL,
    reason TEXT NOT NULL,
    severity TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    first_tick INTEGER NOT NULL,
    last_tick INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_state ON actions (state);
CREATE TABLE IF NOT EXISTS action_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tick INTEGER NOT NULL,
    action_id TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS action_events_tick ON action_events (tick);
CREATE TABLE IF NOT EXISTS carried (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
"""


def _check_version(path: str, row: tuple | None) -> None:
    """Refuse an existing state file whose schema version is missing, not a number, or newer."""
    if row is None:
        raise StoreError(f"{path}: damaged state file: meta.schema_version is missing "
                         "(check it with `wyneos state check`; restore a backup)")
    version = str(row[0])
    if not version.isdigit() or len(version) > 6:
        raise StoreError(f"{path}: damaged state file: meta.schema_version is {version[:40]!r}, not a "
                         "number (check it with `wyneos state check`; restore a backup)")
    if int(version) > SCHEMA_VERSION:
        raise StoreError(f"{path}: state schema {version} is newer than this wyneos-core ({SCHEMA_VERSION})")



def _open_sqlite(config: Any) -> StateStore:
    path = config["state"]["path"]
    return StateStore.open(path if path == ":memory:" else config.resolve(path))


class StateStore(ServiceTables, TrustTables):
    """SQLite-backed state. Use ``StateStore.open(path)``; ``":memory:"`` keeps nothing."""

    #: returns ``{name: document}`` of state kept with each tick (rule states,
    #: ``wyneos_core.rules.memory``): written in the tick's transaction, read by ``carried``
    carry: Any = None
    #: the rulesets plugin hands this store its rule states (etcd replicas carry their own)
    keeps_rule_states = True

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.created_dir: str | None = None
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> StateStore:
        """Open (or create) the state file at ``path``.

        A file that exists must be a WyneOS state file: an empty (zero-length) file, a
        database without WyneOS's ``meta`` table, or a ``schema_version`` that is not a
        number is refused (``StoreError``, exit status 2), never silently started as a
        new cluster. ``wyneos state check`` looks deeper (integrity, every row).
        """
        path = str(path)
        created = None
        if path != ":memory:":
            parent = Path(path).parent
            if not parent.is_dir() and not parent.parent.is_dir():
                # one missing directory (".wyneos/") is made; a chain of them is more likely a typo
                raise StoreError(f"{path}: neither {parent} nor {parent.parent} exists (a typo in state.path?); "
                                 "create the directory first")
        conn = None
        try:
            if path != ":memory:":
                p = Path(path)
                if p.exists() and p.is_file() and p.stat().st_size == 0:
                    raise StoreError(f"{path}: the state file is empty (0 bytes), not a WyneOS state file; it would "
                                     "start a new cluster (no nodes, keys or isolations). Restore a backup "
                                     "(docs/operations.md), or move the file away to start anew")
                if not p.parent.is_dir():
                    p.parent.mkdir()
                    created = str(p.parent)
            conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise StoreError(f"{path}: not a WyneOS state file (state.path): a database with tables "
                                 f"{', '.join(sorted(tables)[:5])} but no meta table")
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() if tables else None
            if tables:  # checked before anything is written to the file
                _check_version(path, row)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # a checkpoint every WAL_CHECKPOINT_PAGES pages, not every 1,000 (SQLite's default):
            # a large fleet's tick writes thousands of pages, so the default copied the WAL
            # into the file (and synced it) at nearly every tick; fewer, larger checkpoints
            # write each page rewritten tick after tick (the same nodes, the same actions) once
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            # and a log that one large write grew (a large fleet's first tick) is cut back after it
            conn.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_PAGES * 4096}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
        except StoreError:
            if conn is not None:
                conn.close()
            raise
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the state file (state.path): {exc.strerror or exc}") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: not a usable WyneOS state file (state.path): {exc}") from None
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        store = cls(conn, path)
        #: the directory made for the state file (None: it existed), said in the first report
        store.created_dir = created
        return store

    def _damaged(self, table: str, key: Any, column: str, why: str) -> StoreError:
        return StoreError(f"{self.path}: damaged row in table {table} ({key!r}): {column}: {why} "
                          "(check the file with `wyneos state check`; restore a backup, docs/operations.md)")

    def close(self) -> None:
        self.conn.close()

    @classmethod
    def open_read_only(cls, path: str | Path) -> StateStore | None:
        """The state file at ``path`` for reading only (nothing created or written), or
        None when there is none or it is not a WyneOS state file."""
        path = str(path)
        if path == ":memory:" or not Path(path).is_file():
            return None
        try:
            conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, timeout=10.0,
                                   isolation_level=None, check_same_thread=False)
            conn.execute("SELECT COUNT(*) FROM actions").fetchone()
        except sqlite3.Error:
            return None
        return cls(conn, path)

    def reopen(self) -> StateStore:
        """A second connection to the same file (reads see only committed state)."""
        return StateStore.open(self.path)

    # -- reading -------------------------------------------------------------------------

    def last_tick(self) -> int:
        row = self.conn.execute("SELECT MAX(tick) FROM ticks").fetchone()
        return int(row[0] or 0)

    def restore_nodes(self, registry: Registry) -> int:
        """Bring back nodes known from an earlier run (those not in the config too)."""
        count = 0
        try:
            rows = self.conn.execute(
                "SELECT id, status, last_seen, load, metadata, licence_ref, fingerprint, registered_at, isolated "
                "FROM nodes").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: damaged state file: table nodes cannot be read: {exc} "
                             "(check it with `wyneos state check`; restore a backup)") from None
        for row in rows:
            if row[0] in _RESERVED_IDS:  # stored by a release that let a node enrol as the orchestrator
                continue
            stored = node_row_problem(row)
            if isinstance(stored, tuple):
                raise self._damaged("nodes", row[0], *stored)
            node = registry.get(row[0])
            if node is None:
                node = registry.register(row[0], now=row[7])
            node.status = NodeStatus(row[1])
            node.last_seen = row[2]
            node.load = row[3]
            stored.pop("customer", None)  # the operator's (config) only, never what a node once reported
            node.metadata = {**stored, **node.metadata}
            node.licence_ref = node.licence_ref or row[5]
            node.fingerprint = node.fingerprint or row[6]
            node.registered_at = row[7]
            node.isolated = bool(row[8])
            count += 1
        self.actions()  # every stored action decodes (a damaged row is refused now, not mid-tick)
        return count

    def actions(self, state: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT id, type, target, origin, reason, severity, params, state, first_tick, last_tick FROM actions"
        args: tuple = ()
        if state is not None:
            sql += " WHERE state = ?"
            args = (state,)
        cols = ("id", "type", "target", "origin", "reason", "severity", "params", "state", "first_tick", "last_tick")
        out = []
        for row in self.conn.execute(sql + " ORDER BY first_tick, id", args):
            problem = action_row_problem(row)
            if problem is not None:
                raise self._damaged("actions", row[0], *problem)
            item = dict(zip(cols, row))
            item["params"] = json.loads(item["params"])
            out.append(item)
        return out

    # -- checking ---------------------------------------------------------------------------

    def check(self, *, full: bool = True) -> list[str]:
        """Problems of the state file, one line each (empty: it is sound): SQLite's
        integrity check (``full``; else the quicker ``quick_check``), the schema
        version, and every row of the nodes, actions, ticks and enrolled-key tables
        decoded as WyneOS reads them."""
        problems: list[str] = []
        c = self.conn
        try:
            for (line,) in c.execute("PRAGMA integrity_check" if full else "PRAGMA quick_check"):
                if line != "ok":
                    problems.append(f"integrity: {line}")
        except sqlite3.DatabaseError as exc:
            return [f"integrity: {exc}"]
        try:
            row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None or not str(row[0]).isdigit():
                problems.append(f"meta.schema_version: {None if row is None else str(row[0])[:40]!r} is not a number")
            for row in c.execute("SELECT id, status, last_seen, load, metadata, licence_ref, fingerprint, "
                                 "registered_at, isolated FROM nodes"):
                found = node_row_problem(row)
                if isinstance(found, tuple):
                    problems.append(f"nodes ({row[0]!r}): {found[0]}: {found[1]}")
            for row in c.execute("SELECT id, type, target, origin, reason, severity, params, state, first_tick, "
                                 "last_tick FROM actions"):
                found = action_row_problem(row)
                if found is not None:
                    problems.append(f"actions ({row[0]!r}): {found[0]}: {found[1]}")
            for tick, summary in c.execute("SELECT tick, summary FROM ticks"):
                if json_problem(summary, dict) is not None:
                    problems.append(f"ticks ({tick!r}): summary: {json_problem(summary, dict)}")
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "node_keys" in tables:
                for node_id, key in c.execute("SELECT node_id, public_key FROM node_keys"):
                    if not isinstance(key, bytes) or len(key) != 32:
                        problems.append(f"node_keys ({node_id!r}): public_key: not a 32-byte Ed25519 key")
        except sqlite3.DatabaseError as exc:
            problems.append(f"cannot read: {exc}")
        return problems

    def action_events(self, since_tick: int = 0) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT tick, action_id, state, detail FROM action_events WHERE tick >= ? ORDER BY seq", (since_tick,)
        )
        return [{"tick": t, "action_id": a, "state": s, "detail": d} for t, a, s, d in rows]

    def tick_times(self, ticks: Iterable[int]) -> dict[int, float]:
        """When each of ``ticks`` started, for those still stored (``state.retention_ticks``)."""
        wanted = sorted(set(ticks))
        out: dict[int, float] = {}
        for i in range(0, len(wanted), 500):  # bounded statements, whatever the number asked
            chunk = wanted[i:i + 500]
            rows = self.conn.execute(f"SELECT tick, started_at FROM ticks WHERE tick IN ({','.join('?' * len(chunk))})",
                                     chunk)
            out.update({int(t): float(s) for t, s in rows})
        return out

    def tick_summaries(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT summary FROM ticks ORDER BY tick DESC LIMIT ?", (limit,))
        return [json.loads(r[0]) for r in rows]

    # -- writing -------------------------------------------------------------------------

    def write_tick(
        self,
        tick: int,
        started_at: float,
        duration_ms: float,
        summary: dict[str, Any],
        nodes: Iterable[Node],
        actions: Iterable[dict[str, Any]],
        events: Iterable[tuple[str, str, str]],
        retention: int,
        cleared: Iterable[str] = (),
    ) -> None:
        """Write one tick in a single transaction.

        :param nodes: nodes whose stored row must be refreshed.
        :param actions: action rows (``id``, ``type``... ``state``, ``first_tick``, ``last_tick``).
        :param events: ``(action_id, state, detail)`` lifecycle events of this tick.
        """
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany(
                "INSERT INTO nodes VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                "status=excluded.status, last_seen=excluded.last_seen, load=excluded.load, "
                "metadata=excluded.metadata, licence_ref=excluded.licence_ref, fingerprint=excluded.fingerprint, "
                "isolated=excluded.isolated, updated_tick=excluded.updated_tick",
                node_rows(nodes, tick),
            )
            actions = list(actions)
            c.executemany(
                "INSERT INTO actions VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                "state=excluded.state, last_tick=excluded.last_tick, reason=excluded.reason",
                ((a["id"], a["type"], a["target"], a["origin"], a["reason"], a["severity"], params, a["state"],
                  a["first_tick"], a["last_tick"])
                 for a, params in zip(actions, encode_each(ENCODE_SORTED, [a["params"] for a in actions], sorted_json))),
            )
            c.executemany(
                "UPDATE actions SET state='cleared', last_tick=? WHERE id=?", ((tick, aid) for aid in cleared)
            )
            c.executemany(
                "INSERT INTO action_events (tick, action_id, state, detail) VALUES (?,?,?,?)",
                ((tick, aid, state, detail) for aid, state, detail in events),
            )
            c.execute(
                "INSERT OR REPLACE INTO ticks VALUES (?,?,?,?)",
                (tick, started_at, duration_ms, encode_each(ENCODE_SORTED, [summary], sorted_json)[0]),
            )
            c.execute("DELETE FROM ticks WHERE tick <= ?", (tick - retention,))
            # the lifecycle of actions that ended more than ``retention`` ticks ago goes too
            # (actions in force keep their whole history)
            c.execute("DELETE FROM actions WHERE state != 'in_force' AND last_tick <= ?", (tick - retention,))
            c.execute("DELETE FROM action_events WHERE tick <= ? AND action_id NOT IN "
                      "(SELECT id FROM actions WHERE state = 'in_force')", (tick - retention,))
            if self.carry is not None:  # rule states: with the tick, or not at all
                c.executemany("INSERT OR REPLACE INTO carried VALUES (?, ?)",
                              ((name, json.dumps(doc, sort_keys=True)) for name, doc in self.carry().items()))
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            forget = getattr(self.carry, "forget", None)
            if forget is not None:  # what the failed write held is written again next time
                forget()
            raise

    def carried(self) -> dict[str, Any]:
        """``{name: document}`` kept with the ticks (a damaged document is left out)."""
        out = {}
        for name, text in self.conn.execute("SELECT name, doc FROM carried"):
            if json_problem(text, dict) is None:
                out[name] = json.loads(text)
        return out

    def forget_node(self, node_id: str) -> None:
        self.conn.execute("DELETE FROM nodes WHERE id = ?", (node_id,))

    def put_blob(self, name: str, data: bytes) -> None:
        """Keep one binary state (``name``: who owns it, e.g. ``telemetry``), replacing the last."""
        self.conn.execute("CREATE TABLE IF NOT EXISTS blobs (name TEXT PRIMARY KEY, data BLOB NOT NULL)")
        self.conn.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?)", (name, sqlite3.Binary(data)))

    def blob(self, name: str) -> bytes | None:
        """The binary state kept under ``name`` (None: never kept)."""
        try:
            row = self.conn.execute("SELECT data FROM blobs WHERE name = ?", (name,)).fetchone()
        except sqlite3.OperationalError:  # no blobs table yet
            return None
        return None if row is None else bytes(row[0])

    def meta(self, key: str, default: Any = None) -> Any:
        """A JSON value kept in the ``meta`` table (``default`` when absent)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    # -- per-target delivery outcomes and effects of actions (builtin state plugin) --------

    _DELIVERY_SCHEMA = """
    CREATE TABLE IF NOT EXISTS action_targets (
        action_id TEXT NOT NULL,
        target TEXT NOT NULL,
        delivered INTEGER NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        tick INTEGER NOT NULL,
        PRIMARY KEY (action_id, target)
    );
    CREATE TABLE IF NOT EXISTS action_effects (
        action_id TEXT PRIMARY KEY,
        carried TEXT,
        effect TEXT,
        tick INTEGER NOT NULL
    );
    """

    def ensure_delivery_tables(self) -> None:
        """Create the delivery-outcome tables if missing (idempotent)."""
        if not getattr(self, "_delivery_ready", False):
            self.conn.executescript(self._DELIVERY_SCHEMA)
            self._delivery_ready = True

    def write_action_outcomes(
        self,
        tick: int,
        outcomes: Iterable[tuple[str, str, bool, str]],
        effects: Iterable[tuple[str, dict[str, Any] | None, dict[str, Any] | None]],
        retention: int,
    ) -> None:
        """Record, in one transaction, the latest delivery outcome of each (action, target)
        and what an action carried and did; forget those of actions no longer in force
        after ``retention`` ticks.

        :param outcomes: ``(action_id, target, delivered, reason)``.
        :param effects: ``(action_id, carried params or None, effect or None)``; None keeps
            what was stored.
        """
        self.ensure_delivery_tables()
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany(
                "INSERT INTO action_targets VALUES (?,?,?,?,?) ON CONFLICT(action_id, target) DO UPDATE SET "
                "delivered=excluded.delivered, reason=excluded.reason, tick=excluded.tick",
                ((a, t, int(ok), r, tick) for a, t, ok, r in outcomes),
            )
            effects = list(effects)
            carried = iter(encode_each(ENCODE_SORTED, [p for _a, p, _e in effects if p is not None], sorted_json))
            done = iter(encode_each(ENCODE_SORTED_TEXT, [e for _a, _p, e in effects if e is not None],
                                    lambda e: json.dumps(e, sort_keys=True, default=str)))
            c.executemany(
                "INSERT INTO action_effects VALUES (?,?,?,?) ON CONFLICT(action_id) DO UPDATE SET "
                "carried=COALESCE(excluded.carried, carried), effect=COALESCE(excluded.effect, effect), "
                "tick=excluded.tick",
                ((a, None if p is None else next(carried), None if e is None else next(done), tick)
                 for a, p, e in effects),
            )
            live = "SELECT id FROM actions WHERE state = 'in_force'"
            c.execute(f"DELETE FROM action_targets WHERE tick <= ? AND action_id NOT IN ({live})",  # noqa: S608
                      (tick - retention,))
            c.execute(f"DELETE FROM action_effects WHERE tick <= ? AND action_id NOT IN ({live})",  # noqa: S608
                      (tick - retention,))
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def action_outcomes(
        self, action_ids: Iterable[str]
    ) -> tuple[dict[str, dict[str, tuple[bool, str]]], dict[str, dict[str, Any]]]:
        """``({action_id: {target: (delivered, reason)}}, {action_id: carried params})``
        of the given actions (those with nothing stored are absent)."""
        self.ensure_delivery_tables()
        wanted = set(action_ids)
        outcomes: dict[str, dict[str, tuple[bool, str]]] = {}
        for a, t, ok, r in self.conn.execute("SELECT action_id, target, delivered, reason FROM action_targets"):
            if a in wanted:
                outcomes.setdefault(a, {})[t] = (bool(ok), r)
        carried: dict[str, dict[str, Any]] = {}
        for a, p in self.conn.execute("SELECT action_id, carried FROM action_effects WHERE carried IS NOT NULL"):
            if a in wanted:
                carried[a] = json.loads(p)
        return outcomes, carried

    def action_effects(self) -> dict[str, dict[str, Any]]:
        """``{action_id: {"carried": params, "effect": effect}}`` as stored."""
        self.ensure_delivery_tables()
        rows = self.conn.execute("SELECT action_id, carried, effect FROM action_effects")
        return {a: {"carried": None if p is None else json.loads(p), "effect": None if e is None else json.loads(e)}
                for a, p, e in rows}

    def _rollback(self) -> None:
        """Roll back the open transaction, if SQLite has not already done so (after
        "database or disk is full" it may have): never hides the error being handled."""
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass


register_backend("sqlite", _open_sqlite)
