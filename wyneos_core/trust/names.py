"""Which trust engine slot holds which node: through the node table, not a second name index.

The trust engine keeps its columns by its own slots (slot 0 is the orchestrator), stable
per node id for as long as the engine lives, so that a node that leaves and comes back
(or is restored from the store before it registers again) carries on from its record.
``SlotNames`` maps node ids to those slots without a dict of every id:

* a node registered in the node table the engine is bound to is found through the
  table's own name index and two small columns by *table* slot: the engine slot bound
  to it (``of_table``, int32) and the table's ``born`` stamp of the node it was bound
  for (``born``, int64): 12 bytes a node, where a dict of every id costs about 80;
* every other id the engine knows (restored from the store but not registered yet,
  departed, the orchestrator, or every id of an engine fed by ids alone, as in tests and
  benches) is in ``detached``, a plain dict.

``bind`` runs once per tick over the registered nodes' table slots (whole columns): the
entries whose table slot was freed or taken by another node since (its ``born`` stamp
differs) are unbound first, their ids go back to ``detached``, so a departed node's
record never reaches the node that takes its slot; then each table slot not bound yet
is bound to the engine slot of its id (from ``detached``) or to a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from wyneos_core.model import ORIGIN
from wyneos_core.names import LookupMapping

__all__ = ["SlotNames"]

#: table slots bound per chunk of a tick that binds many (their positions as Python ints)
_CHUNK = 65536


class SlotNames(LookupMapping):
    """Node id -> trust engine slot (see the module docstring)."""

    __slots__ = ("ids", "detached", "table", "of_table", "born")

    def __init__(self, ids: list[str | None]) -> None:
        #: engine slot -> node id (the engine's own list)
        self.ids = ids
        self.detached: dict[str, int] = {ORIGIN: 0}
        self.table: Any = None
        self.of_table = np.full(0, -1, dtype=np.int32)
        self.born = np.zeros(0, dtype=np.int64)

    # -- the mapping --------------------------------------------------------------------------

    def _bound(self, node_id: Any) -> int | None:
        table = self.table
        if table is None or type(node_id) is not str:
            return None
        at = table.index.get(node_id)
        if at is None or at >= len(self.of_table):
            return None
        slot = int(self.of_table[at])
        return slot if slot >= 0 and self.born[at] == table.born[at] else None

    def get(self, node_id: Any, default: Any = None) -> Any:
        slot = self._bound(node_id)
        return self.detached.get(node_id, default) if slot is None else slot

    def __iter__(self) -> Iterator[str]:
        yield from self.detached
        if self.table is not None:
            ids = self.table.ids
            yield from (ids[t] for t in self._bound_table_slots().tolist())

    def __len__(self) -> int:
        return len(self.detached) + (0 if self.table is None else len(self._bound_table_slots()))

    def _bound_table_slots(self) -> np.ndarray:
        t = self.table
        n = min(len(t.ids), len(self.of_table))
        return np.flatnonzero((self.of_table[:n] >= 0) & (self.born[:n] == t.born[:n]) & t.alive[:n])

    def __setitem__(self, node_id: str, slot: int) -> None:
        self.detached[node_id] = slot

    def update(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Add ids known but not registered (restored from the store)."""
        self.detached.update(pairs)

    # -- in bulk ------------------------------------------------------------------------------

    def slots_of(self, node_ids: Sequence[Any]) -> np.ndarray:
        """The engine slots of ``node_ids`` (int64; -1 for an id the engine does not know)."""
        count = len(node_ids)
        get = self.detached.get
        if self.table is None:
            try:
                return np.fromiter(map(get, node_ids, repeat(-1)), dtype=np.int64, count=count)
            except TypeError:  # an unhashable item: unknown
                return np.fromiter((get(i, -1) if type(i) is str else -1 for i in node_ids), dtype=np.int64,
                                   count=count)
        table = self.table
        at = table.slots_of(node_ids)
        out = np.full(count, -1, dtype=np.int64)
        found = np.flatnonzero((at >= 0) & (at < len(self.of_table)))
        t = at[found]
        slot = self.of_table[t]
        valid = (slot >= 0) & (self.born[t] == table.born[t])
        out[found[valid]] = slot[valid]
        if self.detached:
            for k in np.flatnonzero(out < 0).tolist():  # ids not registered (the orchestrator, departed)
                node_id = node_ids[k]
                out[k] = get(node_id, -1) if type(node_id) is str else -1
        return out

    def bind(self, table: Any, table_slots: np.ndarray, create: Callable[[str, int], int],
             reserve: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[str]]:
        """The engine slots of the nodes in ``table_slots`` of ``table`` (and the ids given
        a new slot, by ``create(node id, position)``, after ``reserve(at most that many)``),
        after unbinding every table slot whose node left or was replaced since it was bound."""
        if self.table is not table:
            if self.table is not None:
                self._unbind_all()
            self.table = table
        capacity = len(table.born)
        if len(self.of_table) < capacity:
            of_table = np.full(capacity, -1, dtype=np.int32)
            of_table[:len(self.of_table)] = self.of_table
            born = np.zeros(capacity, dtype=np.int64)
            born[:len(self.born)] = self.born
            self.of_table, self.born = of_table, born
        of_table, born = self.of_table, self.born
        n = len(table.ids)
        gone = of_table[:n] >= 0
        gone &= (born[:n] != table.born[:n]) | ~table.alive[:n]
        if gone.any():
            self._unbind(np.flatnonzero(gone))
        del gone
        slots = of_table[table_slots].astype(np.int64)
        fresh = np.flatnonzero(slots < 0)
        new: list[str] = []
        if fresh.size:
            if reserve is not None:
                reserve(int(fresh.size))
            ids, detached = table.ids, self.detached
            for lo in range(0, fresh.size, _CHUNK):  # Python ints for a chunk at a time (a cold tick: every node)
                part = fresh[lo:lo + _CHUNK]
                for k, at in zip(part.tolist(), table_slots[part].tolist()):
                    node_id = ids[at]
                    slot = detached.pop(node_id, None)
                    if slot is None:
                        slot = create(node_id, k)
                        detached.pop(node_id, None)
                        new.append(node_id)
                    of_table[at] = slot
                    born[at] = table.born[at]
                    slots[k] = slot
            if len(detached) < 64 and fresh.size > 1024:
                self.detached = dict(detached)  # a dict keeps its size after deletions: let it go
        return slots, new

    def _unbind(self, table_slots: np.ndarray) -> None:
        ids, detached, of_table = self.ids, self.detached, self.of_table
        for at in table_slots.tolist():
            slot = int(of_table[at])
            node_id = ids[slot]
            if node_id is not None:
                detached[node_id] = slot
            of_table[at] = -1

    def _unbind_all(self) -> None:
        t = self.table
        n = min(len(t.ids), len(self.of_table))
        bound = np.flatnonzero(self.of_table[:n] >= 0)
        self._unbind(bound)
