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

from wyneos_core.drift.declared import FIELDS, MAX_TEXT, Declaration, canonical, in_force
from wyneos_core.sharing import FrozenMetadata

__all__ = ["DriftEngine", "DriftView", "STATES", "DriftStep"]

STATES: Final = ("in_sync", "unexplained", "pending", "intended", "repaired", "undeclared")
IN_SYNC, UNEXPLAINED, PENDING, INTENDED, REPAIRED, UNDECLARED = range(6)
_NF = len(FIELDS)
_BITS = np.array([1 << i for i in range(_NF)], dtype=np.uint8)
_UNSET: Final = -1  # a field the declaration does not name
_NONE: Final = -2  # a field the node does not report (or reports unusably)
_metadata = operator.attrgetter("metadata")
_NO_CODES: Final = [_NONE] * _NF
#: memoised label sets and package lists at most (then the memo starts again)
_MEMO: Final = 100_000
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
        self._packages: dict[tuple, int] = {}
        self._by_labels: dict[Any, int] = {}
        self._by_node = False
        self._keys: dict[tuple, int] = {}  # declaration identity -> its key (stable across reloads)
        self.declarations: list[Declaration] = []
        self._decl_keys = np.zeros(0, np.int64)
        self._decl_codes = np.zeros((0, _NF), np.int32)
        self._last_nodes: list[Any] | None = None
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
        self.decl_moved = more(None if first else self.decl_moved, False, bool)
        self.restored = more(None if first else self.restored, False, bool)
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
        self._by_labels.clear()
        self._by_node = any(d.node is not None for d in self.declarations)
        self.meta_id[:] = -1  # every row looked at again

    # -- the tick -----------------------------------------------------------------------------

    def _rows_of(self, nodes: Sequence[Any]) -> np.ndarray:
        """Each node's row; the same node objects in the same order as last tick reuse
        the last answer (the registry keeps its node objects)."""
        last = self._last_nodes
        if last is not None and len(last) == len(nodes) and all(map(operator.is_, nodes, last)):
            return self._row_index
        rows = self.rows
        ids = list(map(_id, nodes))
        missing = [i for i in ids if i not in rows]
        if missing:
            self._grow(len(self.ids) + len(missing))
            for node_id in missing:
                rows[node_id] = len(self.ids)
                self.ids.append(node_id)
        self._last_nodes = list(nodes)
        self._row_index = np.fromiter(map(rows.__getitem__, ids), np.int64, len(ids))
        return self._row_index

    def adopt(self, ids: Sequence[str], state: np.ndarray, mask: np.ndarray, since: np.ndarray,
              changed_at: np.ndarray) -> None:
        """Take a saved state (``wyneos_core.drift.saved``) for these node ids: the rows
        are read again at the next step, which keeps a drift's since-when, and a roll-out
        that was pending stays pending while the node still differs."""
        for node_id in ids:
            if node_id not in self.rows:
                self._grow(len(self.ids) + 1)
                self.rows[node_id] = len(self.ids)
                self.ids.append(node_id)
        r = np.fromiter((self.rows[i] for i in ids), np.int64, len(ids))
        self.state[r] = state
        self.mask[r] = mask
        self.drift_fields[r] = mask
        self.since[r] = since
        self.changed_at[r] = changed_at
        self.restored[r] = True
        self.meta_id[r] = -1

    def _decl_index(self, node_id: str, labels: Any) -> int:
        """The declaration in force for a node (memoised on its labels when no declaration
        names single nodes)."""
        if self._by_node:
            return in_force(self.declarations, node_id, labels)
        key = tuple(sorted(labels.items())) if type(labels) is dict else None
        found = self._by_labels.get(key)
        if found is None:
            if len(self._by_labels) > _MEMO:
                self._by_labels.clear()
            try:
                found = self._by_labels[key] = in_force(self.declarations, node_id, labels)
            except TypeError:  # labels that do not sort (mixed key types): not memoised
                return in_force(self.declarations, node_id, labels)
        return found

    def _field_code(self, field: str, value: Any, declared: Any) -> int:
        """The code of a reported value (memoised for strings and package lists)."""
        t = type(value)
        if t is str and field != "labels":
            code = self._values.get(value[:MAX_TEXT])
            return code if code is not None else self._code(canonical(field, value))
        if t is list and field == "packages":
            try:
                key = tuple(value)
            except TypeError:
                return _NONE
            code = self._packages.get(key)
            if code is None:
                if len(self._packages) > _MEMO:
                    self._packages.clear()
                code = self._packages[key] = self._code(canonical(field, value))
            return code
        return self._code(canonical(field, value, declared))

    def _read(self, nodes: Sequence[Any], rows: np.ndarray, mids: np.ndarray, stale: np.ndarray) -> np.ndarray:
        """Read again the nodes at positions ``stale`` (their metadata object changed, or
        their declaration must be looked up again); their rows. Only the fields the
        declaration in force names are read (the others cannot differ)."""
        out = rows[stale]
        self.meta_id[out] = mids[stale]
        declarations, decl_codes, decl_keys = self.declarations, self._decl_codes, self._decl_keys
        field_code = self._field_code
        meta = self.meta
        indexes = []
        codes = []
        for i, row in zip(stale.tolist(), out.tolist()):
            node = nodes[i]
            md = node.metadata
            meta[row] = md  # kept: its id cannot be reused while it is held
            if type(md) is not dict and type(md) is not FrozenMetadata:  # a node's own metadata is frozen
                md = {}
            index = self._decl_index(node.id, md.get("labels")) if declarations else -1
            indexes.append(index)
            if index < 0:
                codes.append(_NO_CODES)
                continue
            decl = declarations[index]
            row_codes = [_NONE] * _NF
            for field, value in decl.declared:
                row_codes[FIELDS.index(field)] = field_code(field, md.get(field), value)
            codes.append(row_codes)
        idx = np.array(indexes, np.int64)
        keys = np.where(idx >= 0, decl_keys[idx] if len(decl_keys) else -1, -1)
        moved = keys != self.decl_key[out]
        if moved.any():
            mr = out[moved]
            self.prev_key[mr] = self.decl_key[mr]
            self.prev_declared[mr] = self.declared[mr]
            self.decl_key[mr] = keys[moved]
            mi = idx[moved]
            self.declared[mr] = np.where((mi >= 0)[:, None], decl_codes[mi] if len(decl_codes) else _UNSET, _UNSET)
            self.decl_moved[mr] = True
        self.decl[out] = idx
        self.reported[out] = np.array(codes, np.int32).reshape(len(out), _NF)
        return out

    def step(self, nodes: Sequence[Any], now: float) -> DriftStep:
        """Compare every node with its declaration and classify; one call per tick.

        Only the rows whose reported or declared state changed can change state, so
        only they are classified (vectorised); a tick where nothing changed costs the
        two passes that find that out.
        """
        rows = self._rows_of(nodes)
        mids = np.fromiter(map(id, map(_metadata, nodes)), np.int64, len(nodes))
        stale = np.flatnonzero(mids != self.meta_id[rows])
        transitions: list[tuple[str, str, str, list[str]]] = []
        if len(stale):
            before = self.reported[rows[stale]]  # a copy (fancy indexing): the codes before reading again
            changed = self._read(nodes, rows, mids, stale)
            transitions = self._classify(changed, before, now)
        counts = np.bincount(self.state[rows], minlength=len(STATES))
        return DriftStep({name: int(counts[k]) for k, name in enumerate(STATES)}, transitions)

    def _classify(self, r: np.ndarray, before_reported: np.ndarray, now: float) -> list:
        """Classify rows ``r`` (those read again this tick); their transitions."""
        declared = self.declared[r]
        reported = self.reported[r]
        differs = (declared != _UNSET) & (reported != declared)
        mask = (differs * _BITS).sum(axis=1).astype(np.uint8)
        state = self.state[r]
        undeclared = self.decl_key[r] == -1
        drifted = (mask != 0) & ~undeclared
        was = (state == UNEXPLAINED) | (state == PENDING)
        prev = self.prev_declared[r]
        catching = drifted & (self.prev_key[r] != -1) & np.all((prev == _UNSET) | (reported == prev), axis=1)
        moved_now = self.decl_moved[r]
        self.decl_moved[r] = False
        changed_report = np.any(reported != before_reported, axis=1)

        restored = self.restored[r]
        if restored.any():  # first read after a restart: the drift began under today's declaration
            self.restored[r] = False
            catching |= restored & drifted & (state == PENDING)
        start = drifted & ~was
        at_start = self.drift_declared[r]
        at_start[start | restored] = declared[start | restored]
        self.drift_declared[r] = at_start
        seen = np.where(start, 0, self.drift_fields[r]) | mask
        self.drift_fields[r] = seen

        new = state.copy()
        new[drifted] = np.where(catching[drifted], PENDING, UNEXPLAINED)
        ended = ~drifted & was & ~undeclared
        # explained: a declaration changed a field that differed (or the node was catching up)
        redeclared = ((at_start != declared) * _BITS).sum(axis=1).astype(np.uint8)
        explained = (state == PENDING) | ((redeclared & seen) != 0)
        new[ended] = np.where(explained[ended], INTENDED, REPAIRED)
        together = ~drifted & ~was & ~undeclared & moved_now & changed_report & (self.prev_key[r] != -1)
        new[together] = INTENDED
        first = ~drifted & ~undeclared & (state == UNDECLARED)
        new[first & ~together] = IN_SYNC
        new[undeclared] = UNDECLARED

        since = self.since[r]
        since[start] = now
        since[~drifted] = np.nan
        self.since[r] = since
        self.mask[r] = np.where(drifted, mask, 0)
        self.state[r] = new
        moved = np.flatnonzero((new != state) & ~((state == UNDECLARED) & (new == IN_SYNC)))
        out = []
        if len(moved):
            self.changed_at[r[moved]] = now
            for i in moved.tolist():
                row = int(r[i])
                out.append((self.ids[row], STATES[state[i]], STATES[new[i]], self.fields(row)))
        return out

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
