"""The state store: decisions, action lifecycle, node membership and tick history.

``ClusterStateStore`` is the interface every backend implements; ``StateStore`` is the
embedded default, one SQLite file in WAL mode. Each tick's writes are one transaction,
so a crash loses at most the tick in flight, never a committed decision.
``open_state_store`` opens the backend the config's ``state.backend`` names. Backends
register themselves here (``register_backend``) rather than being imported by this
module: SQLite below, etcd (replicas past one machine, ``wyneos_core.ha``) when the
``wyneos_core.ha`` package is imported, as the CLI and the service do.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from itertools import islice, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

from wyneos_core.model import Node, NodeStatus, Severity
from wyneos_core.registry import NODE_ID_PATTERN
from wyneos_core.safeio import bad_text, field_path

if TYPE_CHECKING:
    from wyneos_core.registry import Registry

__all__ = ["ClusterStateStore", "StateStore", "StoreError", "SCHEMA_VERSION", "backends", "open_state_store", "register_backend"]

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


#: the store's JSON text: compact, keys sorted where the old text sorted them (msgspec: one
#: call encodes a tick's actions, events or effects, a fraction of ``json.dumps`` each)
_ENCODE = msgspec.json.Encoder()
_ENCODE_SORTED = msgspec.json.Encoder(order="sorted")
_ENCODE_SORTED_TEXT = msgspec.json.Encoder(order="sorted", enc_hook=str)  # what JSON lacks, as its text
#: rows per chunk of node rows written (bounds what a write of the whole fleet holds at once)
_ROWS_CHUNK = 4096


def encode_each(encoder: msgspec.json.Encoder, items: list[Any],
                fallback: Callable[[Any], str] = json.dumps) -> list[str]:
    """The JSON text of each of ``items``, encoded in one call; ``fallback`` encodes them one
    by one when the encoder refuses one (text that is not valid Unicode, a type it lacks),
    as the store always did."""
    if not items:
        return []
    try:
        return encoder.encode_lines(items).decode().split("\n")[:-1]
    except (TypeError, ValueError, OverflowError):  # UnicodeEncodeError is a ValueError
        return [fallback(item) for item in items]


def _sorted(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _node_columns(nodes: Iterable[Node]) -> Iterable[tuple[list[Any], ...]]:
    """``Node`` values as chunks of stored columns (``Listed.column_chunks``' shape)."""
    it = iter(nodes)
    while chunk := list(islice(it, _ROWS_CHUNK)):
        yield ([n.id for n in chunk], [n.status.value for n in chunk], [n.last_seen for n in chunk],
               [n.load for n in chunk], [n.metadata for n in chunk], [n.licence_ref for n in chunk],
               [n.fingerprint for n in chunk], [n.registered_at for n in chunk], [n.isolated for n in chunk])


def _node_rows(nodes: Iterable[Node], tick: int) -> Iterable[tuple[Any, ...]]:
    """The ``nodes`` rows of ``nodes``, made a chunk at a time: from columns when the nodes
    offer them (``column_chunks``, the report's nodes listed over its column copy), else
    from each ``Node``."""
    columns = getattr(nodes, "column_chunks", None)
    for ids, status, last_seen, load, metadata, ref, fingerprint, registered, isolated in (
            columns() if columns is not None else _node_columns(nodes)):
        yield from zip(ids, status, last_seen, load, encode_each(_ENCODE, metadata), ref, fingerprint, registered,
                       map(int, isolated), repeat(tick))


_STATUSES = frozenset(s.value for s in NodeStatus)
_SEVERITIES = frozenset(s.value for s in Severity)


def _json_problem(text: Any, kind: type) -> str | None:
    if not isinstance(text, str):
        return f"not text ({type(text).__name__})"
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"not JSON ({str(exc)[:80]})"
    if not isinstance(value, kind):
        return f"not a JSON {'object' if kind is dict else kind.__name__}"
    return None


def _number(value: Any, optional: bool = True) -> bool:
    return (value is None and optional) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _node_row_problem(row: tuple) -> dict[str, Any] | tuple[str, str]:
    """The stored metadata of a nodes row, or ``(column, why)`` when the row is damaged."""
    node_id, status, last_seen, load, metadata, _ref, _fp, registered_at, isolated = row
    if not isinstance(node_id, str) or not NODE_ID_PATTERN.match(node_id):
        return "id", (f"not a node id ({str(node_id)[:40]!r}: 1-128 letters, digits, '_', '.', ':' or '-', "
                      "starting with a letter or digit)")
    if status not in _STATUSES:
        return "status", f"unknown status {str(status)[:40]!r} (known: {', '.join(sorted(_STATUSES))})"
    for column, value, optional in (("last_seen", last_seen, True), ("load", load, True),
                                    ("registered_at", registered_at, False)):
        if not _number(value, optional):
            return column, f"not a number ({str(value)[:40]!r})"
    if isolated not in (0, 1):
        return "isolated", f"not 0 or 1 ({str(isolated)[:40]!r})"
    why = _json_problem(metadata, dict)
    if why is not None:
        return "metadata", why
    value = json.loads(metadata)
    where = bad_text(value)
    if where is not None:  # stored by a release that let a lone surrogate in
        return f"metadata.{field_path(where)}", "not valid Unicode text (a lone surrogate)"
    return value


def _action_row_problem(row: tuple) -> tuple[str, str] | None:
    action_id, type_, target, _origin, _reason, severity, params, state, first_tick, last_tick = row
    if not isinstance(type_, str) or not type_:
        return "type", "not an action type"
    if not isinstance(target, str):
        return "target", "not a node id"
    if severity not in _SEVERITIES:
        return "severity", f"unknown severity {str(severity)[:40]!r}"
    if not isinstance(state, str) or not state:
        return "state", "not a lifecycle state"
    if not (isinstance(first_tick, int) and isinstance(last_tick, int)):
        return "first_tick", "not a tick number"
    why = _json_problem(params, dict)
    if why is not None:
        return "params", why
    return None


class StoreError(RuntimeError):
    """The state file cannot be used (not a WyneOS store, newer schema, unreadable)."""


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


@runtime_checkable
class ClusterStateStore(Protocol):
    """What a state store holds for the orchestrator and ``wyneos serve``: ticks, node
    registrations, the action lifecycle as target state, delivery outcomes, node keys,
    enrolment tokens and acknowledgements. ``path`` names where it lives (in messages).

    Rows are plain dicts as ``StateStore`` returns them. ``write_tick`` and
    ``write_action_outcomes`` are the tick's decisions: a replicated backend writes them
    only while its replica leads (and raises a ``StoreError`` otherwise).
    """

    path: str

    def close(self) -> None: ...
    def reopen(self) -> ClusterStateStore: ...
    def last_tick(self) -> int: ...
    def restore_nodes(self, registry: Registry) -> int: ...
    def actions(self, state: str | None = None) -> list[dict[str, Any]]: ...
    def action_events(self, since_tick: int = 0) -> list[dict[str, Any]]: ...
    def tick_summaries(self, limit: int = 20) -> list[dict[str, Any]]: ...
    def write_tick(self, tick: int, started_at: float, duration_ms: float, summary: dict[str, Any],
                   nodes: Iterable[Node], actions: Iterable[dict[str, Any]],
                   events: Iterable[tuple[str, str, str]], retention: int, cleared: Iterable[str] = ()) -> None: ...
    def forget_node(self, node_id: str) -> None: ...
    def meta(self, key: str, default: Any = None) -> Any: ...
    def set_meta(self, key: str, value: Any) -> None: ...
    def ensure_service_tables(self) -> None: ...
    def add_enrol_token(self, token_hash: str, node_id: str | None, uses: int, expires_at: float,
                        now: float, customer: str | None = None) -> None: ...
    def node_customers(self) -> dict[str, str]: ...
    def check(self, *, full: bool = True) -> list[str]: ...
    def enrol_tokens(self) -> list[dict[str, Any]]: ...
    def revoke_enrol_token(self, token_hash: str) -> bool: ...
    def put_node_key(self, node_id: str, public_key: bytes, fingerprint: str, now: float) -> None: ...
    def revoke_node_key(self, node_id: str, now: float) -> bool: ...
    def node_keys(self, since_seq: int = 0) -> list[dict[str, Any]]: ...
    def enrol_with_token(self, token_hash: str | None, node_id: str, public_key: bytes, fingerprint: str,
                         now: float, join: Callable[[str | None], None] | None = None) -> str | None: ...
    def record_action_ack(self, action_id: str, node_id: str, status: str, detail: str, now: float) -> None: ...
    def action_acks(self) -> list[dict[str, Any]]: ...
    def recent_action_acks(self, limit: int = 500) -> list[dict[str, Any]]: ...
    def recent_action_events(self, since_tick: int, limit: int = 500) -> list[dict[str, Any]]: ...
    def action_acks_of(self, node_id: str, action_ids: Iterable[str]) -> set[str]: ...
    def prune_action_acks(self, tick: int, retention: int) -> int: ...
    def ensure_delivery_tables(self) -> None: ...
    def write_action_outcomes(self, tick: int, outcomes: Iterable[tuple[str, str, bool, str]],
                              effects: Iterable[tuple[str, dict[str, Any] | None, dict[str, Any] | None]],
                              retention: int) -> None: ...
    def action_outcomes(self, action_ids: Iterable[str]) -> tuple[dict[str, dict[str, tuple[bool, str]]],
                                                                   dict[str, dict[str, Any]]]: ...
    def action_effects(self) -> dict[str, dict[str, Any]]: ...
    def tick_times(self, ticks: Iterable[int]) -> dict[int, float]: ...
    def ensure_signing_tables(self) -> None: ...
    def put_signed_ack(self, action_id: str, node_id: str, issued_at: int | None, envelope: dict[str, Any],
                       now: float) -> None: ...
    def signed_ack(self, action_id: str, node_id: str) -> dict[str, Any] | None: ...
    def prune_signed_acks(self) -> None: ...
    def add_action_refusals(self, node_id: str, now: float, refusals: Iterable[tuple[str, str | None, str]],
                            keep: int) -> None: ...
    def recent_action_refusals(self, limit: int = 200) -> list[dict[str, Any]]: ...
    def carried(self) -> dict[str, Any]: ...


#: backend name (``state.backend``) -> opener taking the config; see ``register_backend``
_BACKENDS: dict[str, Callable[[Any], ClusterStateStore]] = {}
#: the module that registers a backend this module does not hold, named when it is missing
_BACKEND_MODULES = {"etcd": "wyneos_core.ha"}


def register_backend(name: str, opener: Callable[[Any], ClusterStateStore]) -> None:
    """Make ``state.backend: NAME`` open its store with ``opener(config)``."""
    _BACKENDS[name] = opener


def backends() -> list[str]:
    """The names of the registered store backends."""
    return sorted(_BACKENDS)


def open_state_store(config: Any) -> ClusterStateStore:
    """The store the config's ``state`` section names: SQLite at ``state.path`` (the
    default) or another registered backend (etcd at ``state.etcd.endpoints`` once
    ``wyneos_core.ha`` is imported)."""
    name = config["state"].get("backend", "sqlite")
    opener = _BACKENDS.get(name)
    if opener is None:
        hint = (f"import {_BACKEND_MODULES[name]} to register it (the wyneos command does)"
                if name in _BACKEND_MODULES else f"registered: {', '.join(backends())}")
        raise StoreError(f"state.backend {name!r}: no store backend of that name is registered; {hint}")
    return opener(config)


def _open_sqlite(config: Any) -> StateStore:
    path = config["state"]["path"]
    return StateStore.open(path if path == ":memory:" else config.resolve(path))


class StateStore:
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
            stored = _node_row_problem(row)
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
            problem = _action_row_problem(row)
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
                found = _node_row_problem(row)
                if isinstance(found, tuple):
                    problems.append(f"nodes ({row[0]!r}): {found[0]}: {found[1]}")
            for row in c.execute("SELECT id, type, target, origin, reason, severity, params, state, first_tick, "
                                 "last_tick FROM actions"):
                found = _action_row_problem(row)
                if found is not None:
                    problems.append(f"actions ({row[0]!r}): {found[0]}: {found[1]}")
            for tick, summary in c.execute("SELECT tick, summary FROM ticks"):
                if _json_problem(summary, dict) is not None:
                    problems.append(f"ticks ({tick!r}): summary: {_json_problem(summary, dict)}")
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
                _node_rows(nodes, tick),
            )
            actions = list(actions)
            c.executemany(
                "INSERT INTO actions VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                "state=excluded.state, last_tick=excluded.last_tick, reason=excluded.reason",
                ((a["id"], a["type"], a["target"], a["origin"], a["reason"], a["severity"], params, a["state"],
                  a["first_tick"], a["last_tick"])
                 for a, params in zip(actions, encode_each(_ENCODE_SORTED, [a["params"] for a in actions], _sorted))),
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
                (tick, started_at, duration_ms, encode_each(_ENCODE_SORTED, [summary], _sorted)[0]),
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
            if _json_problem(text, dict) is None:
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
            carried = iter(encode_each(_ENCODE_SORTED, [p for _a, p, _e in effects if p is not None], _sorted))
            done = iter(encode_each(_ENCODE_SORTED_TEXT, [e for _a, _p, e in effects if e is not None],
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

    def _rollback(self) -> None:
        """Roll back the open transaction, if SQLite has not already done so (after
        "database or disk is full" it may have): never hides the error being handled."""
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # -- trust (builtin trust plugin, docs/trust.md) ----------------------------------------
    # One row per node ever scored: kept when the node is deregistered, so that a node
    # re-enrolling (same id, or the same key fingerprint) starts from its old evidence.

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

    # -- end of trust -----------------------------------------------------------------------


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


register_backend("sqlite", _open_sqlite)
