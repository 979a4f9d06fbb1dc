"""The key-value licence registry: schema, writes safe under concurrency, the source.

Schema (``SCHEMA_VERSION`` 1)::

    meta        (key TEXT PRIMARY KEY, value TEXT NOT NULL)
                rows: schema_version, generation (bumped by every write)
    licences    (licence_id TEXT PRIMARY KEY,
                 document   TEXT NOT NULL,      -- the signed licence file (JSON text)
                 status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active','suspended')),
                 revision   INTEGER NOT NULL,   -- 1, 2, ... per licence id
                 updated_at REAL NOT NULL)
    assignments (node_id    TEXT PRIMARY KEY,
                 licence_id TEXT NOT NULL REFERENCES licences(licence_id) ON DELETE CASCADE,
                 updated_at REAL NOT NULL)

A node's licence is its assignment, else the licence whose id equals the node's
licence reference. Every write is one ``BEGIN IMMEDIATE`` transaction in WAL mode
with a busy timeout, and bumps ``generation`` in the same transaction, so concurrent
writers (several processes) queue instead of failing or losing updates, and readers
see whole writes only. ``put`` can be made conditional on the revision read before
(compare-and-set) for read-modify-write cycles.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from wyneos_core.licensing.document import parse_licence
from wyneos_core.licensing.envelope import EnvelopeError
from wyneos_core.licensing.sources import STATUSES, LicenceRecord, SourceUnavailable
from wyneos_core.model import Node

__all__ = ["KVLicenceSource", "LicenceRegistry", "ConflictError", "SCHEMA", "SCHEMA_VERSION", "main"]

#: seconds the (read-only) source waits for a lock before the tick goes on without it
READ_TIMEOUT = 1.0

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS licences (
    licence_id TEXT PRIMARY KEY,
    document   TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    revision   INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    node_id    TEXT PRIMARY KEY,
    licence_id TEXT NOT NULL REFERENCES licences(licence_id) ON DELETE CASCADE,
    updated_at REAL NOT NULL
);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '1');
INSERT OR IGNORE INTO meta VALUES ('generation', '0');
"""


class ConflictError(RuntimeError):
    """A compare-and-set write found another revision than expected."""


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """The source's connection: read-only, short lock wait, text as bytes (decoded per row)."""
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=READ_TIMEOUT,
                           isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(READ_TIMEOUT * 1000)}")
    conn.text_factory = bytes
    return conn


def _connect(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class LicenceRegistry:
    """Write and read the registry. One instance per process (or thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn = _connect(self.path)
        self.conn.executescript(SCHEMA)
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(f"{path}: registry schema {row[0]} is newer than this plugin ({SCHEMA_VERSION})")

    def close(self) -> None:
        self.conn.close()

    def _write(self, fn, *, bump: bool = True):  # noqa: ANN001, ANN202
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            result = fn(c)
            if bump:
                c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return result

    def put(self, document: str | dict, *, status: str = "active", expect_revision: int | None = None) -> int:
        """Store a signed licence document (its ``payload.licence_id`` is the key); return its revision.

        :param expect_revision: if given, the write happens only if the stored revision
            is this one (0: not stored yet); otherwise ``ConflictError``.
        """
        text = document if isinstance(document, str) else json.dumps(document, sort_keys=True)
        try:  # stored only if it parses as a licence (its signature is checked by whoever reads it)
            _, licence = parse_licence(text.encode("utf-8", "surrogatepass"))
        except EnvelopeError as exc:
            raise ValueError(f"document: not a licence document: {exc}") from None
        if status not in STATUSES:
            raise ValueError(f"status: expected one of {sorted(STATUSES)}, got {status!r}")
        licence_id = licence.licence_id

        def write(c: sqlite3.Connection) -> int:
            row = c.execute("SELECT revision FROM licences WHERE licence_id = ?", (licence_id,)).fetchone()
            current = row[0] if row else 0
            if expect_revision is not None and current != expect_revision:
                raise ConflictError(f"licence {licence_id}: revision is {current}, expected {expect_revision}")
            c.execute(
                "INSERT INTO licences VALUES (?,?,?,?,?) ON CONFLICT(licence_id) DO UPDATE SET "
                "document=excluded.document, status=excluded.status, revision=excluded.revision, "
                "updated_at=excluded.updated_at",
                (licence_id, text, status, current + 1, time.time()))
            return current + 1

        return self._write(write)

    def set_status(self, licence_id: str, status: str) -> None:
        def write(c: sqlite3.Connection) -> None:
            cur = c.execute("UPDATE licences SET status = ?, revision = revision + 1, updated_at = ? "
                            "WHERE licence_id = ?", (status, time.time(), licence_id))
            if cur.rowcount == 0:
                raise KeyError(f"licence {licence_id!r} is not in the registry")

        self._write(write)

    def assign(self, node_id: str, licence_id: str) -> None:
        """Assign ``licence_id`` (which must be stored) to ``node_id``; ``KeyError`` otherwise."""
        try:
            self._write(lambda c: c.execute(
                "INSERT INTO assignments VALUES (?,?,?) ON CONFLICT(node_id) DO UPDATE SET "
                "licence_id=excluded.licence_id, updated_at=excluded.updated_at", (node_id, licence_id, time.time())))
        except sqlite3.IntegrityError:
            raise KeyError(f"cannot assign node {node_id!r}: licence {licence_id!r} is not in the registry") from None

    def unassign(self, node_id: str) -> None:
        self._write(lambda c: c.execute("DELETE FROM assignments WHERE node_id = ?", (node_id,)))

    def generation(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    def licences(self) -> list[tuple[str, str, int]]:
        return list(self.conn.execute("SELECT licence_id, status, revision FROM licences ORDER BY licence_id"))

    def revision(self, licence_id: str) -> int:
        row = self.conn.execute("SELECT revision FROM licences WHERE licence_id = ?", (licence_id,)).fetchone()
        return row[0] if row else 0


class KVLicenceSource:
    """The licence source over a registry file (read-only use)."""

    def __init__(self, path: str | Path, *, name: str = "kv") -> None:
        self.name = name
        self.path = Path(path)
        self.generation: int | None = None
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.path.exists():
                raise SourceUnavailable(f"{self.path}: registry file does not exist")
            conn = None
            try:
                conn = _connect_readonly(self.path)
                conn.execute("SELECT 1 FROM licences LIMIT 1")
            except sqlite3.DatabaseError as exc:
                if conn is not None:
                    conn.close()
                raise SourceUnavailable(f"{self.path}: not a licence registry ({exc})") from None
            self._conn = conn
        return self._conn

    def refresh(self, now: float) -> None:
        try:
            row = self._db().execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SourceUnavailable(f"{self.path}: {exc}") from None
        try:
            self.generation = int(row[0]) if row else None
        except ValueError:
            raise SourceUnavailable(f"{self.path}: meta.generation is not a number") from None

    def lookup(self, node: Node, now: float) -> LicenceRecord | None:
        return self.lookup_many([node], now).get(node.id)

    def lookup_many(self, nodes: Sequence[Node], now: float) -> dict[str, LicenceRecord | None]:
        db = self._db()
        out: dict[str, LicenceRecord | None] = {}
        try:
            db.execute("BEGIN")  # one consistent snapshot for the whole batch
            try:
                for start in range(0, len(nodes), 500):
                    chunk = nodes[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    assigned = {_text(k): _text(v) for k, v in db.execute(
                        f"SELECT node_id, licence_id FROM assignments WHERE node_id IN ({marks})",  # noqa: S608
                        [n.id for n in chunk])}
                    wanted = {n.id: assigned.get(n.id) or n.licence_ref for n in chunk}
                    ids = sorted({v for v in wanted.values() if v})
                    rows = {}
                    if ids:
                        marks = ",".join("?" * len(ids))
                        rows = {_text(r[0]): r for r in db.execute(
                            f"SELECT licence_id, document, status FROM licences WHERE licence_id IN ({marks})",  # noqa: S608
                            ids)}
                    for node_id, licence_id in wanted.items():
                        row = rows.get(licence_id) if licence_id else None
                        out[node_id] = None if row is None else self._record(licence_id, row)
            finally:
                db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise SourceUnavailable(f"{self.path}: {exc}") from None
        return out

    def _record(self, licence_id: str, row: tuple) -> LicenceRecord:
        """One row as a record; a row that cannot be used is ``malformed`` for its nodes only."""
        origin = f"{self.path} [{licence_id}]"
        document, status = row[1], _text(row[2])
        if isinstance(document, str):
            document = document.encode("utf-8", "surrogatepass")
        if not isinstance(document, bytes):
            return LicenceRecord(b"", self.name, origin=origin, error=f"document is {type(document).__name__}, "
                                 "not text")
        if status not in STATUSES:
            return LicenceRecord(b"", self.name, origin=origin, error=f"status {status!r:.40} is not one of "
                                 f"{sorted(STATUSES)}")
        return LicenceRecord(document, self.name, status, origin=origin)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _text(value: object) -> str:
    """A TEXT column read as bytes: decoded, with undecodable bytes kept visible (never an error)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    """``wyneos-licence-kv DB put FILE [--suspended] | assign NODE LICENCE | suspend ID | resume ID | list``."""
    p = argparse.ArgumentParser(prog="wyneos-licence-kv", description="Edit a WyneOS key-value licence registry.")
    p.add_argument("db")
    sub = p.add_subparsers(dest="cmd", required=True)
    put = sub.add_parser("put")
    put.add_argument("file")
    put.add_argument("--suspended", action="store_true")
    a = sub.add_parser("assign")
    a.add_argument("node")
    a.add_argument("licence")
    for name in ("suspend", "resume"):
        sub.add_parser(name).add_argument("licence")
    sub.add_parser("list")
    args = p.parse_args(argv)
    try:
        reg = LicenceRegistry(args.db)
    except (sqlite3.DatabaseError, OSError, RuntimeError, ValueError) as exc:
        print(f"wyneos-licence-kv: error: {args.db}: not a licence registry ({exc})", file=sys.stderr)
        return 2
    try:
        if args.cmd == "put":
            try:
                text = Path(args.file).read_text("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"{args.file}: cannot read ({exc})") from None
            try:
                rev = reg.put(text, status="suspended" if args.suspended else "active")
            except ValueError as exc:
                raise ValueError(f"{args.file}: {exc}") from None
            print(f"stored (revision {rev})")
        elif args.cmd == "assign":
            reg.assign(args.node, args.licence)
        elif args.cmd in ("suspend", "resume"):
            reg.set_status(args.licence, "suspended" if args.cmd == "suspend" else "active")
        else:
            for licence_id, status, revision in reg.licences():
                print(f"{licence_id}\t{status}\trevision {revision}")
    except (ValueError, KeyError, OSError, ConflictError, sqlite3.DatabaseError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"wyneos-licence-kv: error: {message}", file=sys.stderr)
        return 2
    finally:
        reg.close()
    return 0
