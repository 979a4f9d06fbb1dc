"""Drift, for the whole fleet at once: declared state against reported state, in columns.

Per node (one row each) the engine keeps, as numpy columns: the declaration in force,
the code of each reported and declared field (``declared.FIELDS``; values interned to
small integers), the fields that differ (a bit mask), the state and since when.
Each tick only the nodes whose reported metadata object changed (the registry replaces
a node's metadata, never mutates it) or whose declaration changed are looked at in
Python; the comparison and the classification run over every row with numpy.

States (``STATES``):

``in_sync``      reports what is declared
``unexplained``  differs from what is declared, and no declaration explains it
``pending``      differs from a newer declaration but still reports the previous one
                 (a roll-out not yet applied)
``intended``     back in line after a change that a newer declaration explains (the
                 declaration of a field that differed changed while it differed, or
                 the node caught up with a newer declaration, or both changed together)
``repaired``     back to the declared state after it had differed, no declaration of
                 a differing field having changed
``undeclared``   no declaration selects the node (``node.drift`` is missing)
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from wyneos_core.drift.declared import FIELDS, Declaration, canonical, in_force

__all__ = ["DriftEngine", "DriftView", "STATES", "DriftStep"]

STATES: Final = ("in_sync", "unexplained", "pending", "intended", "repaired", "undeclared")
IN_SYNC, UNEXPLAINED, PENDING, INTENDED, REPAIRED, UNDECLARED = range(6)
_NF = len(FIELDS)
_BITS = np.array([1 << i for i in range(_NF)], dtype=np.uint8)
_UNSET: Final = -1  # a field the declaration does not name
_NONE: Final = -2  # a field the node does not report (or reports unusably)
_metadata = operator.attrgetter("metadata")
_id = operator.attrgetter("id")


@dataclass(slots=True)
class DriftStep:
    """What one tick of the engine found."""

    counts: dict[str, int]
    #: node id, from state, to state, fields differing
    transitions: list[tuple[str, str, str, list[str]]]


class DriftEngine:
    """Drift of every node against the declarations in force."""

    def __init__(self, declarations: Sequence[Declaration] = ()) -> None:
        self.rows: dict[str, int] = {}
        self.ids: list[str] = []
        self._values: dict[str, int] = {}
        self._keys: dict[tuple, int] = {}  # declaration identity -> its key (stable across reloads)
        self.declarations: list[Declaration] = []
        self._decl_keys = np.zeros(0, np.int64)
        self._decl_codes = np.zeros((0, _NF), np.int32)
        self._last_ids: list[str] | None = None
        self._row_index = np.zeros(0, np.int64)
        self._cap = 0
        self._grow(1024)
        self.set_declarations(declarations)

    # -- columns ------------------------------------------------------------------------------

    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, 2 * self._cap)

        def more(old: np.ndarray | None, fill: Any, dtype: Any, width: int | None = None) -> np.ndarray:
            shape = (cap,) if width is None else (cap, width)
            new = np.full(shape, fill, dtype)
            if old is not None:
                new[: len(old)] = old
            return new

        first = self._cap == 0
        self.meta: list[Any] = ([] if first else self.meta) + [None] * (cap - self._cap)
        self.meta_id = more(None if first else self.meta_id, -1, np.int64)
        self.decl = more(None if first else self.decl, -1, np.int32)  # index into declarations
        self.decl_key = more(None if first else self.decl_key, -1, np.int64)
        self.prev_key = more(None if first else self.prev_key, -1, np.int64)
        self.drift_declared = more(None if first else self.drift_declared, _UNSET, np.int32, _NF)
        self.drift_fields = more(None if first else self.drift_fields, 0, np.uint8)
        self.reported = more(None if first else self.reported, _NONE, np.int32, _NF)
        self.declared = more(None if first else self.declared, _UNSET, np.int32, _NF)
        self.prev_declared = more(None if first else self.prev_declared, _UNSET, np.int32, _NF)
        self.mask = more(None if first else self.mask, 0, np.uint8)
        self.state = more(None if first else self.state, UNDECLARED, np.uint8)
        self.since = more(None if first else self.since, np.nan, np.float64)
        self.changed_at = more(None if first else self.changed_at, np.nan, np.float64)
        self._cap = cap

    def _code(self, text: str | None) -> int:
        if text is None:
            return _NONE
        code = self._values.get(text)
        if code is None:
            code = self._values[text] = len(self._values)
        return code

    def set_declarations(self, declarations: Sequence[Declaration]) -> None:
        """Replace the declarations; every node's declaration in force is looked up again."""
        self.declarations = list(declarations)
        keys = []
        codes = np.full((len(self.declarations), _NF), _UNSET, np.int32)
        for i, d in enumerate(self.declarations):
            identity = (d.source, d.manifest_id, d.serial, d.node, d.selector_labels, repr(d.declared))
            key = self._keys.get(identity)
            if key is None:
                key = self._keys[identity] = len(self._keys)
            keys.append(key)
            for field, value in d.declared:
                codes[i, FIELDS.index(field)] = self._code(canonical(field, value, value))
        self._decl_keys = np.array(keys, np.int64)
        self._decl_codes = codes
        self.meta_id[:] = -1  # every row looked at again

    # -- the tick -----------------------------------------------------------------------------

    def _rows_of(self, nodes: Sequence[Any]) -> np.ndarray:
        ids = list(map(_id, nodes))
        if ids == self._last_ids:
            return self._row_index
        rows = self.rows
        missing = [i for i in ids if i not in rows]
        if missing:
            self._grow(len(self.ids) + len(missing))
            for node_id in missing:
                rows[node_id] = len(self.ids)
                self.ids.append(node_id)
        self._last_ids = ids
        self._row_index = np.fromiter(map(rows.__getitem__, ids), np.int64, len(ids))
        return self._row_index

    def _refresh(self, nodes: Sequence[Any], rows: np.ndarray, now: float) -> np.ndarray:
        """Re-read the nodes whose metadata or declaration changed; the rows whose
        declaration changed this tick."""
        metas = list(map(_metadata, nodes))
        mids = np.fromiter(map(id, metas), np.int64, len(metas))
        stale = np.flatnonzero(mids != self.meta_id[rows])
        moved = []
        declarations, decl_codes, decl_keys = self.declarations, self._decl_codes, self._decl_keys
        code = self._code
        for i in stale.tolist():
            row = int(rows[i])
            md = metas[i]
            self.meta[row] = md  # kept: its id cannot be reused while it is held
            self.meta_id[row] = mids[i]
            labels = md.get("labels") if type(md) is dict else None
            index = in_force(declarations, nodes[i].id, labels) if declarations else -1
            key = int(decl_keys[index]) if index >= 0 else -1
            if key != self.decl_key[row]:
                moved.append(row)
                self.prev_key[row] = self.decl_key[row]
                self.prev_declared[row] = self.declared[row]
                self.decl_key[row] = key
                self.declared[row] = decl_codes[index] if index >= 0 else _UNSET
            self.decl[row] = index
            declared_labels = declarations[index].value("labels") if index >= 0 else None
            get = md.get if type(md) is dict else (lambda _k: None)
            self.reported[row] = [code(canonical(f, get(f), declared_labels if f == "labels" else None))
                                  for f in FIELDS]
        return np.array(moved, np.int64)

    def step(self, nodes: Sequence[Any], now: float) -> DriftStep:
        """Compare every node with its declaration and classify; one call per tick."""
        rows = self._rows_of(nodes)
        before_reported = self.reported[rows].copy()
        moved = self._refresh(nodes, rows, now)
        declared = self.declared[rows]
        reported = self.reported[rows]
        differs = (declared != _UNSET) & (reported != declared)
        mask = (differs * _BITS).sum(axis=1).astype(np.uint8)
        state = self.state[rows]
        undeclared = self.decl_key[rows] == -1
        drifted = (mask != 0) & ~undeclared
        was = (state == UNEXPLAINED) | (state == PENDING)
        prev = self.prev_declared[rows]
        catching = drifted & (self.prev_key[rows] != -1) & np.all((prev == _UNSET) | (reported == prev), axis=1)
        moved_now = np.zeros(len(rows), bool)
        if len(moved):
            moved_now = np.isin(rows, moved)
        changed_report = np.any(reported != before_reported, axis=1)

        start = drifted & ~was
        at_start = self.drift_declared[rows]
        at_start[start] = declared[start]
        self.drift_declared[rows] = at_start
        seen = np.where(start, 0, self.drift_fields[rows]) | mask
        self.drift_fields[rows] = seen

        new = state.copy()
        new[drifted] = np.where(catching[drifted], PENDING, UNEXPLAINED)
        ended = ~drifted & was & ~undeclared
        # explained: a declaration changed a field that differed (or the node was catching up)
        redeclared = ((at_start != declared) * _BITS).sum(axis=1).astype(np.uint8)
        explained = (state == PENDING) | ((redeclared & seen) != 0)
        new[ended] = np.where(explained[ended], INTENDED, REPAIRED)
        together = ~drifted & ~was & ~undeclared & moved_now & changed_report & (self.prev_key[rows] != -1)
        new[together] = INTENDED
        first = ~drifted & ~undeclared & (state == UNDECLARED)
        new[first & ~together] = IN_SYNC
        new[undeclared] = UNDECLARED

        since = self.since[rows]
        since[start] = now
        since[~drifted] = np.nan
        self.since[rows] = since
        self.mask[rows] = np.where(drifted, mask, 0)
        changed = np.flatnonzero(new != state)
        transitions = []
        quiet = (state == UNDECLARED) & (new == IN_SYNC)  # first seen in line: counted, not listed
        changed = changed[~quiet[changed]]
        if len(changed):
            at = self.changed_at[rows]
            at[changed] = now
            self.changed_at[rows] = at
            for i in changed.tolist():
                row = int(rows[i])
                transitions.append((self.ids[row], STATES[state[i]], STATES[new[i]], self.fields(row)))
        self.state[rows] = new
        counts = np.bincount(new, minlength=len(STATES))
        return DriftStep({name: int(counts[k]) for k, name in enumerate(STATES)}, transitions)

    # -- reading ------------------------------------------------------------------------------

    def fields(self, row: int) -> list[str]:
        m = int(self.mask[row])
        return [f for k, f in enumerate(FIELDS) if m >> k & 1]

    def record(self, node_id: str) -> dict[str, Any] | None:
        """The node's drift: state, fields differing, since when, which declaration."""
        row = self.rows.get(node_id)
        if row is None or self.state[row] == UNDECLARED:
            return None
        since = float(self.since[row])
        changed = float(self.changed_at[row])
        decl = self.declarations[self.decl[row]] if 0 <= self.decl[row] < len(self.declarations) else None
        return {"state": STATES[self.state[row]], "fields": self.fields(row),
                "since": None if since != since else since, "changed_at": None if changed != changed else changed,
                "declared_by": None if decl is None else (decl.manifest_id or decl.source)}

    def view(self) -> DriftView:
        return DriftView(self)


class DriftView:
    """``node id -> drift record`` for the rules (``node.drift``), read on demand."""

    __slots__ = ("engine",)

    def __init__(self, engine: DriftEngine) -> None:
        self.engine = engine

    def get(self, node_id: str, default: Any = None) -> dict[str, Any] | None:
        found = self.engine.record(node_id)
        return default if found is None else found
