"""Names to numbers without a dict entry per name: ``NameIndex``.

The node table and the mesh each number their names (a slot, a vertex) and keep them in
a list by number. A ``dict`` from name to number costs about 73 bytes a name on top of
that list (its entry and a Python ``int`` per number), more than the rest of a node's
columns; ``NameIndex`` costs about 16: an open-addressing hash table of ``int32``
numbers (at most two thirds full) over the owner's list, and each number's string hash
(``int64``, so a table can grow and a bulk lookup compare without touching the strings).
A hit is always confirmed by comparing the name itself, so two names with one hash stay
apart. Measured in ``bench/bench_names.py`` (docs/performance.md).

One name at a time (``get``, ``in``, ``[]``) it reads like a dict, a few hundred
nanoseconds a lookup in plain Python; in bulk (``numbers``, ``add_many``) it works over
numpy arrays. It does not own the names: the owner writes ``names[number]`` and tells
the index (``add``, ``remove``); a freed number holds ``None``.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["LookupMapping", "NameIndex"]

_EMPTY, _GONE = -1, -2  # a cell never used; a cell whose name was removed (probing goes on past it)


class LookupMapping(Mapping[Any, Any]):
    """A read-only mapping whose ``get`` is the one lookup (None: missing; no value is
    None): ``[]`` and ``in`` are made from it. Subclasses give ``get``, ``__iter__``
    and ``__len__``."""

    __slots__ = ()

    def get(self, key: Any, default: Any = None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None


class NameIndex(LookupMapping):
    """``name -> number`` over the owner's ``names`` list (``names[number] == name``)."""

    __slots__ = ("names", "_table", "_hashes", "_count", "_used")

    def __init__(self, names: list[str | None]) -> None:
        self.names = names
        self._hashes = np.zeros(max(16, len(names)), np.int64)
        self._count = 0
        self._used = 0
        self._table = array("i", [_EMPTY]) * 16  # its size a power of two: the mask is the size less one
        present = [i for i, name in enumerate(names) if name is not None]
        if present:
            self.add_many([names[i] for i in present], np.asarray(present, np.int64))  # type: ignore[misc]

    # -- one name --------------------------------------------------------------------------

    def get(self, name: object, default: int | None = None) -> int | None:  # type: ignore[override]
        table = self._table  # read once: a resize swaps in a whole new table (and its mask)
        try:
            i = hash(name) & (len(table) - 1)
        except TypeError:
            return default
        n = table[i]  # the first cell: the usual answer, without the loop's set-up
        if n >= 0:
            if self.names[n] == name:
                return n
        elif n == _EMPTY:
            return default
        return self._probe(table, name, i, default)

    def _probe(self, table: array, name: object, i: int, default: int | None) -> int | None:
        names, mask = self.names, len(table) - 1
        while True:
            i = (i + 1) & mask
            n = table[i]
            if n == _EMPTY:
                return default
            if n >= 0 and names[n] == name:
                return n

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        """The names, in number order."""
        return (name for name in self.names if name is not None)

    def add(self, name: str, number: int) -> None:
        """Note that ``names[number]`` is now ``name`` (a name not in the index)."""
        if (self._used + 1) * 3 > len(self._table) * 2:
            self._resize(self._count + 1)
        h = hash(name)
        table = self._table
        mask = len(table) - 1
        i = h & mask
        while table[i] >= 0:
            i = (i + 1) & mask
        if table[i] == _EMPTY:
            self._used += 1
        table[i] = number
        self._count += 1
        if number >= len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.zeros(max(number + 1, 2 * len(self._hashes))
                                                                   - len(self._hashes), np.int64)])
        self._hashes[number] = h

    def remove(self, name: str) -> int | None:
        """Forget ``name`` (before its owner frees ``names[number]``); return its number."""
        h = hash(name)
        table, names = self._table, self.names
        mask = len(table) - 1
        i = h & mask
        while True:
            n = table[i]
            if n == _EMPTY:
                return None
            if n >= 0 and names[n] == name:
                table[i] = _GONE
                self._count -= 1
                return n
            i = (i + 1) & mask

    # -- many names ------------------------------------------------------------------------

    def add_many(self, names: Sequence[str], numbers: np.ndarray) -> None:
        """Note many new names at once (distinct, none in the index yet): ``names[k]`` is
        now ``self.names[numbers[k]]``."""
        count = len(names)
        if not count:
            return
        numbers = np.asarray(numbers, np.int64)
        top = int(numbers.max()) + 1
        if top > len(self._hashes):
            grown = np.zeros(max(top, len(self._hashes) + len(self._hashes) // 8), np.int64)
            grown[:len(self._hashes)] = self._hashes
            self._hashes = grown
        hashes = np.fromiter(map(hash, names), np.int64, count)
        self._hashes[numbers] = hashes
        if (self._used + count) * 3 > len(self._table) * 2:
            self._resize(self._count + count)  # the new names go in below
        self._used = self._place(self._table, hashes, numbers)
        self._count += count

    @staticmethod
    def _place(cells: array, hashes: np.ndarray, numbers: np.ndarray) -> int:
        """Put ``numbers`` into their first free cells of ``cells`` along their probe
        sequences, all at once: a round writes every number still waiting into its cell,
        keeps those that read back their own (one per cell) and moves the others one cell
        on. Return how many cells are used."""
        table = np.frombuffer(cells, np.int32)
        mask = len(table) - 1
        pos = hashes & mask
        waiting = np.arange(len(numbers))
        while len(waiting):
            at = pos[waiting]
            free = table[at] < 0
            table[at[free]] = numbers[waiting[free]]
            # of the numbers written into one cell in a round the last stays: the others
            # (and those whose cell was taken) move one cell on
            lost = waiting[~(free & (table[at] == numbers[waiting]))]
            pos[lost] = (pos[lost] + 1) & mask
            waiting = lost
        used = int(np.count_nonzero(table != _EMPTY))
        del table
        return used

    def _resize(self, count: int) -> None:
        """A table for ``count`` names, filled before it replaces the old one (a reader
        meanwhile reads the old table whole)."""
        size = 16
        while size * 2 < count * 3 + 3:
            size *= 2
        old = np.frombuffer(self._table, np.int32)
        live = old[old >= 0].astype(np.int64)
        del old
        table = array("i", [_EMPTY]) * size
        used = self._place(table, self._hashes[live], live)
        self._table = table
        self._used = used

    def numbers(self, names: Sequence[object], missing: int = -1) -> np.ndarray:
        """The numbers of ``names`` (``int64``, in order; ``missing`` for a name not in
        the index), probed over numpy arrays and each hit confirmed by its name."""
        count = len(names)
        try:
            hashes = np.fromiter(map(hash, names), np.int64, count)
        except TypeError:  # an unhashable name: one at a time
            return np.fromiter((missing if (n := self.get(name)) is None else n for name in names), np.int64, count)
        table = np.frombuffer(self._table, np.int32)
        stored = self._hashes
        mask = len(table) - 1
        pos = hashes & mask
        cells = table[pos].astype(np.int64)  # the first cell of each: most names are there
        hit = (cells >= 0) & (stored[cells] == hashes)  # a negative cell reads a hash it then ignores
        matched = hit
        out = np.where(hit, cells, missing)
        waiting = np.flatnonzero(~hit & (cells != _EMPTY))
        while len(waiting):  # the others: one cell on, a round at a time
            pos[waiting] = (pos[waiting] + 1) & mask
            cells = table[pos[waiting]].astype(np.int64)
            hit = (cells >= 0) & (stored[cells] == hashes[waiting])
            out[waiting[hit]] = cells[hit]
            matched[waiting[hit]] = True
            waiting = waiting[~hit & (cells != _EMPTY)]
        del table
        found = np.flatnonzero(matched)
        if len(found):  # confirm each hit by its name (equal hashes, different names: looked up alone)
            at: Any = range(count) if len(found) == count else found.tolist()
            mine = out.tolist() if len(found) == count else out[found].tolist()
            asked = names if len(found) == count else [names[k] for k in at]
            if len(mine) > 1 and list(operator.itemgetter(*mine)(self.names)) == list(asked):
                return out  # every hit is its own name (one C comparison of two lists)
            for k, ok in zip(at, map(operator.eq, map(self.names.__getitem__, mine), asked)):
                if not ok:
                    n = self.get(names[k])
                    out[k] = missing if n is None else n
        return out
