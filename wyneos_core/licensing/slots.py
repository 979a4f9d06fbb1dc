"""What the licence engine keeps per node table slot, as columns.

``SlotCache`` holds, for every slot of one ``NodeTable``, the cached licence result of
the node in it: its ``ResultPool`` index (``code``, -1: none), the ``licence_stamp`` and
last rollback it was made for (``key``, ``rollback``), when it is to be looked up again
(``fresh``), when it changes by time alone (``until``), the verdicts counter it was made
under, its seat (an index into ``seats``, -1: no seat limit), the source record it was
made from (None: not reusable), the last good record and when it was good (fail-open
outages), the features granted to a node refused with ``entitlement_missing``
(``granted``: few nodes, a dict by slot) and a copy of the metadata it was made for
(``licence_inputs``; compared when the node is looked up again, so a change made in
place, which the table cannot note, is seen at the next refresh). The verdicts counter
is int32.

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
            ("fresh", np.float64, -np.inf), ("until", np.float64, np.inf), ("verdicts", np.int32, 0),
            ("code", np.int32, -1), ("seat", np.int32, -1), ("good_at", np.float64, _NAN))
_OBJECTS = ("record", "good", "inputs")


class SlotCache:
    """Cached licence results by slot of ``table`` (see the module docstring)."""

    def __init__(self, table: NodeTable) -> None:
        self.table = table
        for name, dtype, fill in _NUMERIC:
            setattr(self, name, np.full(0, fill, dtype))
        for name in _OBJECTS:
            setattr(self, name, np.empty(0, object))
        #: slot -> the features its licence grants, for nodes refused with ``entitlement_missing``
        self.granted: dict[int, frozenset[str]] = {}
        self.seats: list[tuple[str, int]] = []
        self._seat_index: dict[tuple[str, int], int] = {}

    def fit(self) -> None:
        capacity = len(self.table.status)
        old = len(self.code)
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

