"""Licence results as columns: one code per node, ``LicenceResult`` objects only on demand.

The licence engine keeps, per node table slot, the index of its result in a pool of
distinct results (``ResultPool``: the fields of a ``LicenceResult`` but the node id; a
thousand nodes sharing a licence share one entry). ``validate`` hands back a
``LicenceResults``: the tick's results by position of the nodes, as columns

* ``ids`` (node ids), ``slots`` (their table slots), ``codes`` (pool index),
* ``state`` (``int8``: 0 invalid, 1 valid, 2 valid in grace) and ``reason`` (``int16``,
  an index into ``nodetable.LICENCE_REASONS``),

and as a ``Sequence[LicenceResult]`` whose items are made when read. ``mapping()`` is the
report's ``licences``: a read-only ``Mapping[str, LicenceResult]`` that makes its dict of
results the first time it is read by node (later reads are dict reads); ``counts()``,
``problems()`` and the columns answer without making a result per node.

Made results are kept per slot by the engine (``ResultObjects``), so a reader that reads
every node each tick makes each object once, not once per tick.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from wyneos_core.model import LicenceResult
from wyneos_core.nodetable import LICENCE_IN_GRACE, LICENCE_INVALID, LICENCE_REASONS, LICENCE_VALID

__all__ = ["LicenceMap", "LicenceResults", "ResultObjects", "ResultPool"]


class ResultPool:
    """Distinct results without their node id: ``fields[i]`` is the tuple of a
    ``LicenceResult``'s fields after ``node_id``; ``state``/``reason`` their codes."""

    def __init__(self) -> None:
        self.fields: list[tuple] = []
        self._index: dict[tuple, int] = {}
        self._state: list[int] = []
        self._reason: list[int] = []
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, result: LicenceResult) -> int:
        """The pool index of ``result``'s fields (added when new)."""
        fields = (result.valid, result.reason, result.detail, result.licence_id, result.customer, result.product,
                  result.tier, tuple(result.features), result.expires, result.in_grace, result.source)
        code = self._index.get(fields)
        if code is None:
            code = self._index[fields] = len(self.fields)
            self.fields.append(fields)
            self._state.append(LICENCE_INVALID if not result.valid else
                               LICENCE_IN_GRACE if result.in_grace else LICENCE_VALID)
            try:
                self._reason.append(LICENCE_REASONS.index(result.reason))
            except ValueError:
                LICENCE_REASONS.append(result.reason)
                self._reason.append(len(LICENCE_REASONS) - 1)
            self._arrays = None
        return code

    def __len__(self) -> int:
        return len(self.fields)

    def codes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(state, reason)`` by pool index."""
        if self._arrays is None:
            self._arrays = (np.array(self._state, np.int8), np.array(self._reason, np.int16))
        return self._arrays


class ResultObjects:
    """The ``LicenceResult`` objects made so far, by slot, with the pool index and the
    slot's ``born`` stamp they were made for (a stale one is made anew)."""

    def __init__(self) -> None:
        self.objects = np.empty(0, object)
        self.code = np.empty(0, np.int64)
        self.born = np.empty(0, np.int64)

    def fit(self, capacity: int) -> None:
        """Room for ``capacity`` slots (made when results are first read as objects)."""
        if len(self.objects) < capacity:
            old = len(self.objects)
            objects = np.empty(capacity, object)
            objects[:old] = self.objects
            code = np.full(capacity, -1, np.int64)
            code[:old] = self.code
            born = np.zeros(capacity, np.int64)
            born[:old] = self.born
            self.objects, self.code, self.born = objects, code, born

    def forget(self) -> None:
        """After the pool was renumbered: every object is made anew when next read."""
        self.code[:] = -1


class LicenceResults(Sequence[LicenceResult]):
    """One tick's licence results by position (see the module docstring)."""

    def __init__(self, ids: list[str], slots: np.ndarray, born: np.ndarray, codes: np.ndarray, pool: ResultPool,
                 objects: ResultObjects | None, index: Mapping[str, int] | None = None) -> None:
        self.ids = ids
        self._index = index  # the table's id -> slot (finds one node's position without a dict)
        self._sorted: bool | None = None
        self.slots = slots
        self.born = born
        self.codes = codes
        self.fields = pool.fields  # a renumbered pool is a new list: this tick's stays as it was
        state, reason = pool.codes()
        self.state = state[codes] if len(codes) else np.zeros(0, np.int8)
        self.reason = reason[codes] if len(codes) else np.zeros(0, np.int16)
        self._objects = objects
        self._pool = pool
        self._list: list[LicenceResult] | None = None
        #: the mapping made last, held weakly: it holds these results, and a strong reference
        #: back made a cycle that kept every tick's columns (about 15 B a node) until the
        #: cyclic collector's rare full pass
        self._map: weakref.ref[LicenceMap] | None = None

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, position: Any) -> Any:
        if isinstance(position, slice):
            return self.list()[position]
        if self._list is not None:
            return self._list[position]
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(position)
        return self._item(position)

    def _item(self, position: int) -> LicenceResult:
        """The result at ``position``: the object kept for its slot if there is one, else a new one."""
        keep, slot, code = self._objects, int(self.slots[position]), self.codes[position]
        if keep is not None and slot < len(keep.code) and keep.code[slot] == code \
                and keep.born[slot] == self.born[position] and self.fields is self._pool.fields:
            return keep.objects[slot]
        return LicenceResult(self.ids[position], *self.fields[code])

    def position(self, node_id: str) -> int | None:
        """Where ``node_id`` is, found through the table's index (None: not found that way)."""
        index = self._index
        slot = index.get(node_id) if index is not None else None
        if slot is None:
            return None
        slots = self.slots
        if self._sorted is None:
            self._sorted = bool(np.all(slots[1:] > slots[:-1]))
        if not self._sorted:
            return None
        at = int(np.searchsorted(slots, slot))
        return at if at < len(slots) and slots[at] == slot and self.ids[at] == node_id else None

    def __iter__(self) -> Iterator[LicenceResult]:
        return iter(self.list())

    def list(self) -> list[LicenceResult]:
        """Every result as an object (kept objects reused; new ones kept for next time)."""
        if self._list is not None:
            return self._list
        ids, fields, codes = self.ids, self.fields, self.codes
        keep = self._objects
        if keep is None or not len(codes):
            self._list = [LicenceResult(ids[i], *fields[c]) for i, c in enumerate(codes.tolist())]
            return self._list
        slots = self.slots
        keep.fit(int(slots.max()) + 1)
        kept = (keep.code[slots] == codes) & (keep.born[slots] == self.born)
        objects = keep.objects[slots]
        made = np.flatnonzero(~kept)
        if len(made):
            new = [LicenceResult(ids[i], *fields[c]) for i, c in zip(made.tolist(), codes[made].tolist())]
            objects[made] = new
            if fields is self._pool.fields:  # still the engine's numbering: keep them
                at = slots[made]
                keep.objects[at] = new
                keep.code[at] = codes[made]
                keep.born[at] = self.born[made]
        self._list = objects.tolist()
        return self._list

    def mapping(self) -> LicenceMap:
        """The results by node id (``TickReport.licences``): the same mapping while it is held."""
        found = self._map() if self._map is not None else None
        if found is None:
            found = LicenceMap(self)
            self._map = weakref.ref(found)
        return found

    def counts(self) -> dict[str, int]:
        """Nodes per reason code (over the columns)."""
        return _counted(self.reason)

    def summary(self) -> dict[str, int]:
        """As ``model.licence_summary``: nodes per reason code, valid ones in grace as ``in_grace``."""
        graced = self.state == LICENCE_IN_GRACE
        out = _counted(self.reason[~graced])
        if graced.any():
            out["in_grace"] = out.get("in_grace", 0) + int(graced.sum())
        return out

    def last_with(self, reason: str) -> LicenceResult | None:
        """The result of the last node (in position order) whose reason is ``reason``."""
        try:
            code = LICENCE_REASONS.index(reason)
        except ValueError:
            return None
        at = np.flatnonzero(self.reason == code)
        return self[int(at[-1])] if len(at) else None

    def problems(self) -> list[LicenceResult]:
        """The results that are not plainly valid (invalid or in grace), in position order."""
        at = np.flatnonzero(self.state != LICENCE_VALID)
        if self._list is not None:
            return [self._list[i] for i in at.tolist()]
        ids, fields, codes = self.ids, self.fields, self.codes
        return [LicenceResult(ids[i], *fields[c]) for i, c in zip(at.tolist(), codes[at].tolist())]


_ABSENT = object()


class LicenceMap(Mapping[str, LicenceResult]):
    """``TickReport.licences`` over ``LicenceResults``: read-only. A few nodes' results are
    found one by one (each made alone); a reader that goes on asking (more than a
    sixteenth of the nodes) makes the dict of them all, and ``get`` is then that dict's own
    ``get`` (C speed for readers that ask for every node); iterating makes it at once."""

    def __init__(self, results: LicenceResults) -> None:
        self.results = results
        self._dict: dict[str, LicenceResult] | None = None
        self._reads = 0
        self._budget = max(64, len(results) // 16)

    def _full(self) -> dict[str, LicenceResult]:
        if self._dict is None:
            self._dict = dict(zip(self.results.ids, self.results.list()))
        return self._dict

    def _one(self, key: Any, default: Any = None) -> Any:
        found = self._dict
        if found is None:
            self._reads += 1
            if self._reads <= self._budget and type(key) is str:
                position = self.results.position(key)
                if position is not None:
                    return self.results._item(position)
            found = self._full()  # not found through the index (left since?), or many reads
        return found.get(key, default)

    @property
    def get(self) -> Any:  # type: ignore[override]
        """``get(node_id, default=None)``: see the class docstring."""
        return self._dict.get if self._dict is not None else self._one

    def __getitem__(self, key: str) -> LicenceResult:
        found = self._one(key, _ABSENT)
        if found is _ABSENT:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return self._one(key, _ABSENT) is not _ABSENT

    def __iter__(self) -> Iterator[str]:
        return iter(self._full())

    def __len__(self) -> int:
        return len(self.results)

    def values(self) -> Any:
        return self._full().values()

    def items(self) -> Any:
        return self._full().items()

    def keys(self) -> Any:
        return self._full().keys()

    def counts(self) -> dict[str, int]:
        return self.results.counts()

    def problems(self) -> list[LicenceResult]:
        return self.results.problems()

    def summary(self) -> dict[str, int]:
        return self.results.summary()

    def last_with(self, reason: str) -> LicenceResult | None:
        return self.results.last_with(reason)

    def __repr__(self) -> str:
        return f"LicenceMap({len(self)} results: {self.counts()})"


def _counted(reasons: np.ndarray) -> dict[str, int]:
    found = np.bincount(reasons, minlength=len(LICENCE_REASONS)) if len(reasons) else []
    return {LICENCE_REASONS[i]: int(n) for i, n in enumerate(found) if n}
