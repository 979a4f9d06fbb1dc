"""What the licence engine keeps per node table slot, as columns.

``SlotCache`` holds, for every slot of one ``NodeTable``, the cached licence result of
the node in it. Per slot: the ``licence_stamp`` and last rollback it was made for
(``key``, ``rollback``), when it is to be looked up again (``fresh``), the last good
record and when it was good (fail-open outages), a copy of the metadata it was made for
(``licence_inputs``; compared when the node is looked up again, so a change made in
place, which the table cannot note, is seen at the next refresh) and ``entry``: what
the check made, shared by every node it is the same for (``Entries``: the source record
it was made from, None: not reusable; its ``ResultPool`` index, -1: none; when it
changes by time alone, ``until``; its seat, an index into ``seats``, -1: no seat limit;
the verdicts counter it was made under). The nodes of one licence checked under the
same revocation list share one entry, so the slot columns are 60 bytes a node where a
column for each of those cost 84. The features granted to a node refused with
``entitlement_missing`` are a dict by slot (few nodes).

A slot's entry belongs to the node that was in it: when the table's ``born`` stamp of
the slot is not the one the entry was made for, ``adopt`` clears it, so nothing of a
departed node (its result, its last good licence, its grants) passes to the next one.

``sync`` keeps a private ``NodeTable`` for callers that pass plain ``Node`` objects
(tests, plugins): their licence inputs are compared field by field and copied, so a
change made in place is seen as one.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any
import numpy as np

from wyneos_core.model import Node, NodeStatus
from wyneos_core.nodetable import LICENCE_METADATA, STATUS_CODE, NodeTable

__all__ = ["SlotCache", "columns_of", "licence_inputs", "same_rollback"]

_NAN = float("nan")
_NUMERIC = (("born", np.int64, 0), ("key", np.int64, -1), ("rollback", np.float64, _NAN),
            ("fresh", np.float64, -np.inf), ("good_at", np.float64, _NAN), ("entry", np.int32, -1))
_OBJECTS = ("good", "inputs")
#: what a check made, shared by the nodes it is the same for (``Entries``): name, dtype,
#: value of "no entry" (the last element of each column, read by entry -1)
_SHARED = (("code", np.int32, -1), ("seat", np.int32, -1), ("until", np.float64, np.inf), ("verdicts", np.int64, 0))


class Entries:
    """The distinct outcomes of checks: (source record, result code, until, seat,
    verdicts counter), each once however many nodes share it (the nodes of one licence
    checked under the same revocation list share one). Columns by entry number, each
    with one more element at the end, the outcome of "no entry", which entry -1 reads."""

    __slots__ = ("code", "seat", "until", "verdicts", "record", "count", "_index")

    def __init__(self, capacity: int = 64) -> None:
        for name, dtype, empty in _SHARED:
            setattr(self, name, np.full(capacity + 1, empty, dtype))
        self.record: list[Any] = [None] * (capacity + 1)
        self.count = 0
        self._index: dict[tuple[int, int, float, int, int], int] = {}

    def add(self, record: Any, code: int, until: float, seat: int, verdicts: int) -> int:
        """The number of this outcome (a new one if no node has had it yet)."""
        key = (0 if record is None else id(record), code, until, seat, verdicts)  # the record is kept: its id holds
        found = self._index.get(key)
        if found is not None:
            return found
        at = self.count
        if at == len(self.code) - 1:
            self._grow(2 * at)
        self.code[at], self.seat[at], self.until[at], self.verdicts[at] = code, seat, until, verdicts
        self.record[at] = record
        self.count = at + 1
        self._index[key] = at
        return at

    def _grow(self, capacity: int) -> None:
        for name, dtype, empty in _SHARED:
            new = np.full(capacity + 1, empty, dtype)
            new[:self.count] = getattr(self, name)[:self.count]
            setattr(self, name, new)
        self.record = self.record[:self.count] + [None] * (capacity + 1 - self.count)

    def keep(self, used: np.ndarray) -> np.ndarray:
        """Keep only the entries ``used`` (ascending); returns old number -> new (-1: gone),
        with one more element for -1."""
        remap = np.full(self.count + 1, -1, dtype=np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        old = self
        fresh = Entries(max(64, 2 * len(used)))
        for name, _, _ in _SHARED:
            getattr(fresh, name)[:len(used)] = getattr(old, name)[used]
        for k, at in enumerate(used.tolist()):
            fresh.record[k] = old.record[at]
            fresh._index[(0 if old.record[at] is None else id(old.record[at]), int(old.code[at]),
                          float(old.until[at]), int(old.seat[at]), int(old.verdicts[at]))] = k
        fresh.count = len(used)
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))
        return remap


class SlotCache:
    """Cached licence results by slot of ``table`` (see the module docstring)."""

    def __init__(self, table: NodeTable) -> None:
        self.table = table
        for name, dtype, fill in _NUMERIC:
            setattr(self, name, np.full(0, fill, dtype))
        for name in _OBJECTS:
            setattr(self, name, np.empty(0, object))
        #: what each slot's check made (``entry``: a number into these, -1: none)
        self.entries = Entries()
        #: slot -> the features its licence grants, for nodes refused with ``entitlement_missing``
        self.granted: dict[int, frozenset[str]] = {}
        self.seats: list[tuple[str, int]] = []
        self._seat_index: dict[tuple[str, int], int] = {}

    def fit(self) -> None:
        capacity = len(self.table.status)
        old = len(self.entry)
        if old >= capacity:
            return
        for name, dtype, fill in _NUMERIC:
            new = np.full(capacity, fill, dtype)
            new[:old] = getattr(self, name)
            setattr(self, name, new)
        for name in _OBJECTS:
            new = np.empty(capacity, object)
            new[:old] = getattr(self, name)
            setattr(self, name, new)

    def adopt(self, slots: np.ndarray) -> None:
        """Clear the entries of ``slots`` whose node is not the one they were made for."""
        born = self.table.born[slots]
        moved = slots[self.born[slots] != born]
        if len(moved):
            for name, _, fill in _NUMERIC:
                getattr(self, name)[moved] = fill
            for name in _OBJECTS:
                getattr(self, name)[moved] = None
            if self.granted:
                for slot in moved.tolist():
                    self.granted.pop(slot, None)
            self.born[moved] = self.table.born[moved]

    # -- what the slots' checks made --------------------------------------------------------

    def codes(self, slots: np.ndarray) -> np.ndarray:
        """The result code of each slot of ``slots`` (-1: none)."""
        return self.entries.code[self.entry[slots]]

    def seat_codes(self, slots: np.ndarray) -> np.ndarray:
        """The seat (index into ``seats``) of each slot of ``slots`` (-1: no seat limit)."""
        return self.entries.seat[self.entry[slots]]

    def code_at(self, slot: int) -> int:
        return int(self.entries.code[self.entry[slot]])

    def made(self, slot: int) -> tuple[Any, float, int]:
        """(source record, until, verdicts counter) of the check that made ``slot``'s entry."""
        e, entries = int(self.entry[slot]), self.entries
        return entries.record[e], float(entries.until[e]), int(entries.verdicts[e])

    def set(self, slot: int, record: Any, code: int, until: float, seat: int, verdicts: int) -> None:
        self.entry[slot] = self.entries.add(record, code, until, seat, verdicts)

    def recode(self, remap: np.ndarray) -> np.ndarray:
        """Result codes renumbered (``remap``: old code -> new, -1: gone); returns the slots
        whose result is gone."""
        e = self.entries
        live = e.code[:e.count] >= 0
        e.code[:e.count][live] = remap[e.code[:e.count][live]]
        e._index = {(0 if r is None else id(r), int(c), float(u), int(s), int(v)): k for k, (r, c, u, s, v) in
                    enumerate(zip(e.record[:e.count], e.code[:e.count].tolist(), e.until[:e.count].tolist(),
                                  e.seat[:e.count].tolist(), e.verdicts[:e.count].tolist()))}
        return np.flatnonzero((self.entry >= 0) & (e.code[self.entry] < 0))

    def compact(self, slots: np.ndarray) -> None:
        """Let go of the entries no slot has any more (when they outnumber the slots)."""
        e = self.entries
        if e.count <= 2 * len(slots) + 1024:
            return
        taken = self.entry >= 0
        used = np.unique(self.entry[taken])
        remap = e.keep(used)
        self.entry[taken] = remap[self.entry[taken]]

    def seat_code(self, seat: tuple[str, int] | None) -> int:
        if seat is None:
            return -1
        code = self._seat_index.get(seat)
        if code is None:
            code = self._seat_index[seat] = len(self.seats)
            self.seats.append(seat)
        return code


def columns_of(nodes: Sequence[Node], own: NodeTable) -> tuple[NodeTable, np.ndarray, list[str]]:
    """``(table, slots, ids)`` of ``nodes``: the registry's columns when they come from a
    ``NodeTable`` (``NodeList``), else ``own`` brought up to date with them."""
    table = getattr(nodes, "table", None)
    slots = getattr(nodes, "slots", None)
    if isinstance(table, NodeTable) and isinstance(slots, np.ndarray) and callable(getattr(nodes, "ids", None)):
        return table, slots, nodes.ids()  # type: ignore[attr-defined]
    index = own.index
    taken: list[int] = []
    ids: list[str] = []
    for node in nodes:
        nid = node.id
        md = node.metadata or {}
        inputs = {k: md[k] for k in LICENCE_METADATA if k in md}
        slot = index.get(nid)
        if slot is None:
            slot = own.add(nid, registered_at=node.registered_at, metadata=copy.deepcopy(inputs),
                           licence_ref=node.licence_ref, fingerprint=node.fingerprint)
        else:
            own.licence_ref[slot] = node.licence_ref  # the lists note a change of value
            own.fingerprint[slot] = node.fingerprint
            if own.metadata[slot] != inputs:
                own.metadata[slot] = copy.deepcopy(inputs)
            own.registered_at[slot] = node.registered_at
        own.status[slot] = STATUS_CODE[NodeStatus(node.status)]
        rollback = node.last_rollback
        own.last_rollback[slot] = _NAN if rollback is None else rollback
        taken.append(slot)
        ids.append(nid)
    if len(index) > len(taken):
        for nid in set(index).difference(ids):
            own.remove(nid)
    return own, np.array(taken, dtype=np.int64), ids


def licence_inputs(node: Node) -> tuple[Any, Any, Any] | None:
    """A copy of the metadata values a node's licence result depends on (None: none)."""
    md = node.metadata
    if not md:
        return None
    values = tuple(md.get(k) for k in LICENCE_METADATA)
    if values == (None, None, None):
        return None
    return copy.deepcopy(values)  # type: ignore[return-value]


def same_rollback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise equality where NaN (no rollback) equals NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b))

