"""Licence sources: where the licence documents of nodes come from.

A source is any object with

``name``                       the name ``licence.sources`` refers to it by
``lookup(node, now)``          the ``LicenceRecord`` of that node, or None if this source
                               has none (the next source is asked); raises
                               ``SourceUnavailable`` if it cannot answer right now

and optionally

``lookup_many(nodes, now)``    ``{node_id: LicenceRecord | None}`` for many nodes in one
                               go (remote sources batch their requests); a node missing
                               from the answer counts as unavailable
``refresh(now)``               called once per tick before any lookup
``generation``                 a value that changes whenever the source's data changed;
                               cached results from a source are dropped when it does
``close()``                    called at shutdown

Sources never verify anything: they hand over the signed document as it is stored,
with the source's own status of the licence (``active`` or ``suspended``). The
builtin licence plugin verifies, checks and caches. A source that finds one node's
entry unreadable hands over a record with ``error`` set (that node's licence is
``malformed``) instead of failing for every node.
"""

from __future__ import annotations

import hashlib
import os
import threading
from stat import S_ISREG
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from wyneos_core.licensing.document import parse_licence
from wyneos_core.licensing.envelope import MAX_DOCUMENT_BYTES
from wyneos_core.model import Node
from wyneos_core.safeio import FileRefused, read_regular_file

__all__ = ["FileSource", "LicenceRecord", "LicenceSource", "SourceUnavailable", "STATUSES", "call_within"]

STATUSES = frozenset({"active", "suspended"})
SUFFIXES = (".licence", ".lic", ".json")


class SourceUnavailable(Exception):
    """The source cannot answer now (unreachable, timed out, error status, bad answer)."""


@dataclass(frozen=True, slots=True)
class LicenceRecord:
    """A licence document as a source holds it."""

    document: bytes
    source: str
    status: str = "active"
    origin: str = ""  # where it came from: a file path, a URL, a table row
    digest: str = field(default="", compare=False)
    #: set by a source that found this node's entry unreadable (a bad row, an entry it
    #: cannot decode): the node's licence is then ``malformed`` with this message, and
    #: only that node is affected
    error: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, got {self.status!r}")
        if not self.digest:
            object.__setattr__(self, "digest", hashlib.sha256(self.document).hexdigest())


@runtime_checkable
class LicenceSource(Protocol):
    name: str

    def lookup(self, node: Node, now: float) -> LicenceRecord | None: ...


@dataclass(slots=True)
class _Entry:
    path: Path
    stamp: tuple[int, int]
    record: LicenceRecord
    licence_id: str | None
    issued: float


class FileSource:
    """The builtin source: a directory of licence files and a node-to-licence mapping.

    Files ending in ``.licence``, ``.lic`` or ``.json`` are read. A node's licence is
    found by its reference (``mapping[node.id]``, else ``node.licence_ref``), matched
    first against file names without suffix, then against licence ids (the newest
    ``issued`` wins when renewals sit next to old files). The directory is re-read when
    it changes, at most every ``rescan`` seconds (only changed files are read again).
    """

    #: its calls never block (regular files only, opened with O_NONBLOCK, sizes checked
    #: first): the engine calls it directly, without a deadline thread
    bounded = True

    def __init__(self, directory: str | Path, mapping: Mapping[str, str] | None = None, *,
                 name: str = "file", rescan: float = 5.0) -> None:
        self.name = name
        self.directory = Path(directory)
        self.mapping = dict(mapping or {})
        self.rescan = rescan
        self.generation = 0
        self._entries: dict[str, _Entry] = {}  # by file path
        self._by_stem: dict[str, LicenceRecord] = {}
        self._by_id: dict[str, LicenceRecord] = {}
        self._scanned_at: float | None = None
        self._dir_stamp: tuple[int, int] | None = None

    def refresh(self, now: float) -> None:
        try:
            st = self.directory.stat()
            dir_stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
        except OSError:
            dir_stamp = None
        due = self._scanned_at is None or now - self._scanned_at >= self.rescan or now < self._scanned_at
        if dir_stamp == self._dir_stamp and not due:
            return
        self._scanned_at = now
        self._dir_stamp = dir_stamp
        if self._scan():
            self.generation += 1

    def _scan(self) -> bool:
        seen: dict[str, _Entry] = {}
        changed = False
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            names = []
        directory = str(self.directory)
        entries, join, stat = self._entries, os.path.join, os.stat
        for fname in names:  # plain strings: this runs over every file at every rescan
            if not fname.endswith(SUFFIXES) or fname.startswith("."):
                continue
            full = join(directory, fname)
            try:
                st = stat(full)
            except OSError:
                continue
            stamp = (st.st_mtime_ns, st.st_size)
            old = entries.get(full)
            if old is not None and old.stamp == stamp:
                seen[full] = old
                continue
            path = self.directory / fname
            if not S_ISREG(st.st_mode):  # a FIFO, a device, a directory: never opened
                changed = True
                seen[full] = _Entry(path, stamp, self._refused(path, "not a regular file; only regular files are "
                                                                    "read"), None, 0.0)
                continue
            try:  # opened without blocking, checked to be regular and small enough before reading
                data = read_regular_file(path, MAX_DOCUMENT_BYTES)
            except FileRefused as exc:
                changed = True
                seen[full] = _Entry(path, stamp, self._refused(path, str(exc.strerror)), None, 0.0)
                continue
            except OSError:
                continue
            changed = True
            licence_id, issued = None, 0.0
            try:
                _, lic = parse_licence(data)
                licence_id, issued = lic.licence_id, lic.issued
            except Exception:  # noqa: BLE001 - one bad file never stops the scan of the others
                pass  # kept by file name: validation reports it as malformed, naming the file
            seen[full] = _Entry(path, stamp, LicenceRecord(data, self.name, origin=str(path)), licence_id, issued)
        if set(seen) != set(self._entries):
            changed = True
        if changed:
            self._entries = seen
            by_stem: dict[str, LicenceRecord] = {}
            by_id: dict[str, tuple[float, LicenceRecord]] = {}
            for entry in seen.values():
                stem = entry.path.name.rsplit(".", 1)[0]
                by_stem[stem] = entry.record
                if entry.licence_id is not None:
                    best = by_id.get(entry.licence_id)
                    if best is None or entry.issued > best[0]:
                        by_id[entry.licence_id] = (entry.issued, entry.record)
            self._by_stem = by_stem
            self._by_id = {k: v[1] for k, v in by_id.items()}
        return changed

    def _refused(self, path: Path, why: str) -> LicenceRecord:
        """The record of a file that is not read (its own digest: results are cached by it)."""
        return LicenceRecord(b"", self.name, origin=str(path), error=why,
                             digest=hashlib.sha256(f"refused\0{path}\0{why}".encode()).hexdigest())

    def reference(self, node: Node) -> str | None:
        return self.mapping.get(node.id) or node.licence_ref

    def lookup(self, node: Node, now: float) -> LicenceRecord | None:
        if self._scanned_at is None:
            self.refresh(now)
        ref = self.mapping.get(node.id) or node.licence_ref
        if not ref:
            return None
        return self._by_stem.get(ref) or self._by_id.get(ref)

    def lookup_many(self, nodes: Sequence[Node], now: float) -> dict[str, LicenceRecord | None]:
        return {n.id: self.lookup(n, now) for n in nodes}

    def records(self) -> list[LicenceRecord]:
        return [e.record for e in self._entries.values()]


_BUSY: dict[int, threading.Thread] = {}  # id(source) -> a call that overran its deadline, still running


def call_within(source: Any, timeout: float, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` (a call on ``source``) with a deadline of ``timeout`` seconds.

    A source marked ``bounded`` (its calls cannot block, like ``FileSource``) is called
    directly. Any other call runs on a daemon thread; if it does not return in time the
    tick goes on without it (``SourceUnavailable``: the outage policy applies), and while
    that call is still hanging the source is not asked again (it stays unavailable). A
    daemon thread never holds up the process at exit (SIGTERM stays prompt).
    """
    if getattr(source, "bounded", False) is True:
        return fn(*args)
    key = id(source)
    hanging = _BUSY.get(key)
    if hanging is not None:
        if hanging.is_alive():
            raise SourceUnavailable(f"a call that overran its {timeout:g} s deadline has not returned yet")
        del _BUSY[key]
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"wyneos-licence-{getattr(source, 'name', '?')}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        _BUSY[key] = thread
        raise SourceUnavailable(f"no answer within {timeout:g} s (licence.source_timeout)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def describe(source: Any) -> str:
    return f"{getattr(source, 'name', '?')} ({type(source).__module__}.{type(source).__qualname__})"
