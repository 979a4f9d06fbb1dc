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
                 objects: ResultObjects | None) -> None:
        self.ids = ids
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
        self._map: LicenceMap | None = None

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
        return LicenceResult(self.ids[position], *self.fields[self.codes[position]])

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
        """The results by node id (``TickReport.licences``)."""
        if self._map is None:
            self._map = LicenceMap(self)
        return self._map

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


class LicenceMap(Mapping[str, LicenceResult]):
    """``TickReport.licences`` over ``LicenceResults``: read-only; its dict is made the first
    time a node's result is read (``get`` is that dict's own ``get``)."""

    def __init__(self, results: LicenceResults) -> None:
        self.results = results
        self._dict: dict[str, LicenceResult] | None = None

    def _full(self) -> dict[str, LicenceResult]:
        if self._dict is None:
            self._dict = dict(zip(self.results.ids, self.results.list()))
        return self._dict

    @property
    def get(self) -> Any:  # type: ignore[override]
        """The dict's own ``get`` (C speed for readers that ask for every node)."""
        return self._full().get

    def __getitem__(self, key: str) -> LicenceResult:
        return self._full()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._full()

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
