"""The fleet as a table: one typed column per node field, indexed by a stable slot.

The registry keeps its nodes here instead of one Python object per node. Every field the
tick reads has its column (numpy arrays: status as a small code, last heartbeat, load,
registration time, isolation, last clock rollback, trust and its tier as a code); ids
live in one list with an id-to-slot index (a ``names.NameIndex``: about 16 bytes a node,
a dict would take about 70), the one every other part of the core looks names up in
(``slot_of``, ``slots_of`` in bulk, ``ids_at``); metadata, licence reference and
fingerprint in lists by slot, whose values are shared (``wyneos_core.sharing``: nodes
without metadata or with equal metadata hold one ``FrozenMetadata``, equal licence
references one string). A node that leaves frees its slot, which the next node to join
takes.

Columns for vector code (rules, licence), a small API (every array is indexed by slot:
index it with ``slots()``; a slot's values are only meaningful while ``alive[slot]``):

* ``metadata_codes(key)`` -> ``(codes, values)``: ``key``'s metadata values
  dictionary-encoded, ``codes[slot]`` an ``int32`` index into ``values`` (-1: the node has
  no such key). The first call for a key declares it (one pass over the nodes); from then
  on every metadata write keeps its codes current. Codes are stable (``values`` only
  grows): a code compared once stays comparable. NaN is one value; lists and mappings
  are encoded by their JSON text. ``declared_metadata`` names the declared keys.
* ``version()`` -> ``VersionColumn``: ``metadata.version`` parsed once per distinct value
  (``parse_version``: ``"v2.4.1-rc1"`` -> ``(2, 4, 1)``): ``codes`` as above, ``parsed[code]``
  the tuple (None: not a version), ``rank[code]`` its order among the parsed ones (-1:
  none), and ``at_least(bound)`` -> ``(mask, known)`` over all slots.
* ``licence_state`` (``int8``: ``LICENCE_UNCHECKED`` -1, ``LICENCE_INVALID`` 0,
  ``LICENCE_VALID`` 1, ``LICENCE_IN_GRACE`` 2) and ``licence_reason`` (``int16``, an index
  into ``LICENCE_REASONS``; -1 unchecked): written by the licence step each tick.
* ``licence_stamp`` (``int64``): changes whenever what a node's licence result depends on
  changes (its licence reference, fingerprint, ``metadata`` ``features``/``customer``/
  ``integrity``; and a new node in the slot), so the licence step compares one column to
  find what to check again. ``born`` (``int64``) is new for every node that takes a slot.

Metadata, licence reference and fingerprint are written by replacing a slot's value
(``table.metadata[slot] = {...}``; a view's ``node.metadata = {...}``): the lists note it.
A metadata mapping is never changed in place (other nodes and earlier tick reports share
it): ``FrozenMetadata`` refuses such a change with a ``TypeError``.

Code that wants a ``Node`` gets a ``NodeView`` (``view(slot)``; ``NodeList`` for the
registered nodes), made only when asked for (``wyneos_core.nodeviews``). The codes of
the coded columns (``STATUSES``, ``TIERS``, ``LICENCE_*``) are in ``wyneos_core.nodecodes``;
both are importable from here.

``freeze()`` copies the columns at a moment (the end of a tick) into ``FrozenNodes``, a
read-only sequence of ``Node`` values made as they are read: the tick report's nodes.
What did not change since the previous freeze (while that one is still held) is shared
with it, read only.
"""

from __future__ import annotations

import itertools
import operator
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from wyneos_core.metadata_codes import VersionColumn, _Dictionary
from wyneos_core.model import Node
from wyneos_core.names import NameIndex
from wyneos_core.nodecodes import (LICENCE_IN_GRACE, LICENCE_INVALID, LICENCE_REASONS, LICENCE_UNCHECKED,
                                   LICENCE_VALID, OFFLINE, ONLINE, STALE, STATUS_CODE, STATUSES, TIERS, UNKNOWN)
from wyneos_core.nodeviews import FrozenNodes, NodeList, NodeView, node_value
from wyneos_core.sharing import EMPTY_METADATA, FrozenMetadata, MetadataPool, shared_ref

__all__ = ["FrozenNodes", "LICENCE_IN_GRACE", "LICENCE_INVALID", "LICENCE_METADATA", "LICENCE_REASONS",
           "LICENCE_UNCHECKED", "LICENCE_VALID", "NodeList", "NodeTable", "NodeView", "OFFLINE", "ONLINE", "STALE",
           "STATUSES", "STATUS_CODE", "TIERS", "UNKNOWN", "VersionColumn"]

_NAN = float("nan")
#: the metadata keys a licence result depends on (a change bumps ``licence_stamp``)
LICENCE_METADATA = ("features", "customer", "integrity")
_stamps = itertools.count(1)


class _Noted(list):
    """A list by slot that tells its table when a slot is given a new value, stored as
    ``share`` gives it (one object for equal values: ``wyneos_core.sharing``)."""

    __slots__ = ("changed", "share", "version")

    def __setitem__(self, slot: Any, value: Any) -> None:  # type: ignore[override]
        old = list.__getitem__(self, slot)
        value = self.share(value)
        list.__setitem__(self, slot, value)
        self.version += 1
        self.changed(slot, old, value)


class NodeTable:
    """Columns of the registered nodes by slot (see the module docstring)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.ids: list[str | None] = []
        #: id -> slot over ``ids`` (about 16 bytes a node where a dict takes about 70)
        self.index = NameIndex(self.ids)
        self.free: list[int] = []
        self.metadata: list[FrozenMetadata] = _Noted()
        self.licence_ref: list[str | None] = _Noted()
        self.fingerprint: list[str | None] = _Noted()
        self.metadata.changed = self._metadata_changed  # type: ignore[attr-defined]
        self.licence_ref.changed = self.fingerprint.changed = self._licence_input_changed  # type: ignore[attr-defined]
        self.metadata.share = self._share_metadata = MetadataPool()  # type: ignore[attr-defined]
        self.licence_ref.share = shared_ref  # type: ignore[attr-defined]
        self.fingerprint.share = _same  # type: ignore[attr-defined]  # one per machine: nothing to share
        self.metadata.version = self.licence_ref.version = self.fingerprint.version = 0  # type: ignore[attr-defined]
        self._last_frozen: weakref.ref[FrozenNodes] | None = None
        self._ids_copy: tuple[int, list[str]] | None = None
        self.tier_names: list[str] = list(TIERS)
        self._declared: dict[str, _Dictionary] = {}
        self._version: VersionColumn | None = None
        self._grow(max(16, capacity))
        #: bumped whenever a node joins or leaves (``NodeList`` and ``slots`` follow it)
        self.membership = 0
        self._slots: np.ndarray | None = None

    def _grow(self, capacity: int) -> None:
        old = len(getattr(self, "status", ()))

        def grown(name: str, dtype: Any, fill: Any) -> np.ndarray:
            new = np.full(capacity, fill, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)
            return new

        self.status = grown("status", np.int8, UNKNOWN)
        self.last_seen = grown("last_seen", np.float64, _NAN)
        self.load = grown("load", np.float64, _NAN)
        self.registered_at = grown("registered_at", np.float64, 0.0)
        self.isolated = grown("isolated", bool, False)
        self.last_rollback = grown("last_rollback", np.float64, _NAN)
        self.trust = grown("trust", np.float64, _NAN)
        self.tier = grown("tier", np.int8, -1)
        self.alive = grown("alive", bool, False)
        self.born = grown("born", np.int64, 0)
        self.licence_stamp = grown("licence_stamp", np.int64, 0)
        self.licence_state = grown("licence_state", np.int8, LICENCE_UNCHECKED)
        self.licence_reason = grown("licence_reason", np.int16, -1)
        for column in getattr(self, "_declared", {}).values():
            codes = np.full(capacity, -1, np.int32)
            codes[:old] = column.codes[:old]
            column.codes = codes

    # -- change notes -----------------------------------------------------------------

    def _licence_input_changed(self, slot: int, old: Any, new: Any) -> None:
        if old != new:
            self.licence_stamp[slot] = next(_stamps)

    def _metadata_changed(self, slot: int, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        if old is new:
            return
        for key, column in self._declared.items():
            column.codes[slot] = column.code(new, key)
        for key in LICENCE_METADATA:
            if old.get(key) != new.get(key) or (key in old) != (key in new):
                self.licence_stamp[slot] = next(_stamps)
                break

    # -- encoded metadata (see the module docstring) -----------------------------------

    @property
    def declared_metadata(self) -> list[str]:
        return list(self._declared)

    def metadata_codes(self, key: str) -> tuple[np.ndarray, list[Any]]:
        """``(codes by slot, values by code)`` of metadata ``key`` (declared on first use)."""
        column = self._declared.get(key)
        if column is None:
            column = _Dictionary(len(self.status))
            metadata, code = self.metadata, column.code
            for slot in self.slots().tolist():
                column.codes[slot] = code(metadata[slot], key)
            self._declared[key] = column
        return column.codes, column.values

    def version(self) -> VersionColumn:
        """``metadata.version`` parsed once per distinct value (see ``VersionColumn``)."""
        codes, values = self.metadata_codes("version")
        if self._version is None:
            self._version = VersionColumn(codes, [], np.full(0, -1, np.int32))
        self._version.follow(codes, values)
        return self._version

    # -- membership -------------------------------------------------------------------

    def add(self, node_id: str, *, registered_at: float, metadata: Mapping[str, Any] | None = None,
            licence_ref: str | None = None, fingerprint: str | None = None) -> int:
        """A slot for a new node (a freed one first), its columns set to a new node's."""
        if self.free:
            slot = self.free.pop()
            self.ids[slot] = node_id
            self.metadata[slot] = metadata  # type: ignore[assignment]  # stored shared and frozen
            self.licence_ref[slot] = licence_ref
            self.fingerprint[slot] = fingerprint
        else:
            slot = len(self.ids)
            if slot >= len(self.status):
                self._grow(2 * len(self.status))
            self.ids.append(node_id)
            md = self._share_metadata(metadata)
            self.metadata.append(md)
            self.licence_ref.append(shared_ref(licence_ref))
            self.fingerprint.append(fingerprint)
            for key, column in self._declared.items():
                column.codes[slot] = column.code(md, key)
        self.born[slot] = self.licence_stamp[slot] = next(_stamps)
        self.licence_state[slot] = LICENCE_UNCHECKED
        self.licence_reason[slot] = -1
        self.index.add(node_id, slot)
        self.status[slot] = UNKNOWN
        self.last_seen[slot] = _NAN
        self.load[slot] = _NAN
        self.registered_at[slot] = registered_at
        self.isolated[slot] = False
        self.last_rollback[slot] = _NAN
        self.trust[slot] = _NAN
        self.tier[slot] = -1
        self.alive[slot] = True
        self.membership += 1
        return slot

    def add_many(self, node_ids: Sequence[str], *, registered_at: float,
                 licence_refs: Sequence[str | None] | None = None) -> np.ndarray:
        """Slots for many new nodes at once (new slots at the end; freed ones are left for
        ``add``), each with empty metadata and no fingerprint; return their slots."""
        count = len(node_ids)
        first = len(self.ids)
        if first + count > len(self.status):
            self._grow(max(2 * len(self.status), first + count))
        slots = np.arange(first, first + count, dtype=np.int64)
        list.extend(self.ids, node_ids)
        self.index.add_many(node_ids, slots)
        list.extend(self.metadata, [EMPTY_METADATA] * count)
        list.extend(self.licence_ref, map(shared_ref, licence_refs) if licence_refs is not None else [None] * count)
        list.extend(self.fingerprint, [None] * count)
        stamps = np.fromiter(itertools.islice(_stamps, count), np.int64, count)
        end = first + count
        self.born[first:end] = self.licence_stamp[first:end] = stamps
        self.status[first:end] = UNKNOWN
        self.last_seen[first:end] = self.load[first:end] = self.last_rollback[first:end] = _NAN
        self.trust[first:end] = _NAN
        self.registered_at[first:end] = registered_at
        self.isolated[first:end] = False
        self.tier[first:end] = -1
        self.licence_state[first:end] = LICENCE_UNCHECKED
        self.licence_reason[first:end] = -1
        self.alive[first:end] = True
        for column in self._declared.values():
            column.codes[first:end] = -1
        self.membership += 1
        return slots

    def remove(self, node_id: str) -> Node:
        """Free ``node_id``'s slot; return its last fields as a ``Node`` value."""
        slot = self.index.remove(node_id) if type(node_id) is str else None
        if slot is None:
            raise KeyError(node_id)
        value = self.value(slot)
        self.ids[slot] = None
        self.metadata[slot] = EMPTY_METADATA
        self.licence_state[slot] = LICENCE_UNCHECKED
        self.licence_reason[slot] = -1
        self.licence_ref[slot] = None
        self.fingerprint[slot] = None
        self.alive[slot] = False
        self.free.append(slot)
        self.membership += 1
        return value

    def __len__(self) -> int:
        return len(self.index)

    # -- names and slots (the stable API: code outside this module looks names up here) --

    def slot_of(self, node_id: str) -> int | None:
        """The slot of ``node_id`` (None: not registered)."""
        return self.index.get(node_id) if type(node_id) is str else None  # type: ignore[no-any-return]

    def slots_of(self, node_ids: Sequence[str], missing: int = -1) -> np.ndarray:
        """The slots of ``node_ids`` (``int64``, in their order; ``missing`` for an id not
        registered): one bulk lookup."""
        return self.index.numbers(node_ids, missing)

    def ids_at(self, slots: Iterable[int] | np.ndarray) -> list[str]:
        """The ids of the nodes in ``slots`` (each a registered node's slot), in order:
        every slot in order is a copy of ``ids``; a large share of them are gathered as
        pointers (no Python ``int`` per slot), a few one by one (no pass over every id)."""
        ids = self.ids
        if isinstance(slots, np.ndarray):
            if len(slots) == len(ids) and slots is self._slots and self._slots_version == self.membership:
                return list(ids)  # type: ignore[arg-type]  # slots() with no free slot: every slot, in order
            if len(slots) > 256 and len(slots) * 8 > len(ids):
                return np.asarray(ids, dtype=object)[slots].tolist()  # type: ignore[no-any-return]
            slots = slots.tolist()
        return list(map(ids.__getitem__, slots))  # type: ignore[arg-type]

    def ids_copy(self) -> list[str]:
        """A copy of ``ids`` (every slot taken: no free slot), made once per membership:
        every ``NodeList.ids`` and frozen copy of one membership share it (never change it)."""
        held = self._ids_copy
        if held is None or held[0] != self.membership:
            held = self._ids_copy = (self.membership, list(self.ids))  # type: ignore[arg-type]
        return held[1]

    def slots(self) -> np.ndarray:
        """The slots of the registered nodes, in slot order (cached until one joins or leaves)."""
        if self._slots is None or self._slots_version != self.membership:
            self._slots = np.flatnonzero(self.alive[:len(self.ids)])
            self._slots_version = self.membership
        return self._slots

    # -- views and values -------------------------------------------------------------

    def view(self, slot: int) -> NodeView:
        view = object.__new__(NodeView)
        view._t = self
        view._s = slot
        view._id = self.ids[slot]
        return view

    def value(self, slot: int) -> Node:
        """The node in ``slot`` as a detached ``Node`` value."""
        return node_value(self, slot, self.ids[slot])

    def tier_code(self, name: str | None) -> int:
        if name is None:
            return -1
        try:
            return self.tier_names.index(name)
        except ValueError:
            self.tier_names.append(name)
            return len(self.tier_names) - 1

    def status_counts(self, slots: np.ndarray | None = None) -> dict[str, int]:
        """Nodes per status plus ``isolated``, counted over the columns."""
        slots = self.slots() if slots is None else slots
        counts = np.bincount(self.status[slots], minlength=len(STATUSES))
        out = {s.value: int(counts[i]) for i, s in enumerate(STATUSES)}
        out["isolated"] = int(np.count_nonzero(self.isolated[slots]))
        return out

    def freeze(self) -> FrozenNodes:
        """The registered nodes' fields now, copied (the columns go on changing): the
        columns a ``Node`` is made of, not the live steps' own (licence state and stamps).
        A list or column equal to the one of the previous freeze (while that is still
        held) is that one, shared and read only: consecutive tick reports of a steady
        fleet hold what did not change between them once. A column whose values are all
        one value (no rollback seen, a fleet enrolled at once) is held as that value."""
        slots = self.slots()
        whole = len(slots) == len(self.ids)
        at = None if whole else slots.tolist()
        last = self._last_frozen() if self._last_frozen is not None else None
        last = last.table if last is not None and last.table.membership == self.membership else None
        frozen = NodeTable.__new__(NodeTable)
        frozen.versions = {}
        for name in ("ids", "metadata", "licence_ref", "fingerprint"):
            values = getattr(self, name)
            version = frozen.versions[name] = getattr(values, "version", 0)  # ids change with membership
            if last is not None and last.versions[name] == version:
                copy = getattr(last, name)
            elif name == "ids":
                copy = self.ids_copy() if at is None else list(map(values.__getitem__, at))
            else:
                copy = _Repeated.of(values, len(slots)) if at is None else None
                copy = copy or (list(values) if at is None else list(map(values.__getitem__, at)))
            setattr(frozen, name, copy)
        frozen.tier_names = list(self.tier_names)
        for name in _FROZEN_COLUMNS:
            column = getattr(self, name)
            before = getattr(last, name) if last is not None else None
            if before is not None and at is None and _equal(before, column[:len(slots)]):
                copy = before  # unchanged since the last freeze: no copy at all
            else:
                values = column[:len(slots)] if at is None else column[slots]
                copy = _one_value(values)
                if copy is None:
                    copy = values.copy() if at is None else values
                    copy.flags.writeable = False
                if before is not None and at is not None and _equal(before, copy):
                    copy = before
            setattr(frozen, name, copy)
        frozen.alive = np.broadcast_to(np.ones(1, bool), (len(slots),))
        frozen.free = []
        frozen.membership = self.membership
        frozen._slots = None
        frozen.index = {}
        frozen._declared = {}
        frozen._version = None
        frozen._last_frozen = None
        out = FrozenNodes(frozen)
        self._last_frozen = weakref.ref(out)
        return out

    def licence_reason_code(self, reason: str) -> int:
        """The ``licence_reason`` code of ``reason`` (a reason not met before is appended)."""
        try:
            return LICENCE_REASONS.index(reason)
        except ValueError:
            LICENCE_REASONS.append(reason)
            return len(LICENCE_REASONS) - 1



class _Repeated(Sequence[Any]):
    """One value at every position (a frozen list whose items are all one object)."""

    __slots__ = ("value", "count")

    def __init__(self, value: Any, count: int) -> None:
        self.value, self.count = value, count

    @classmethod
    def of(cls, values: list[Any], count: int) -> _Repeated | None:
        """``values[:count]`` as one value repeated when every item is one object; else None."""
        if count < 2:
            return None
        first = values[0]
        same = all(map(operator.is_, itertools.islice(values, count), itertools.repeat(first)))
        return cls(first, count) if same else None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, position: Any) -> Any:
        if isinstance(position, slice):
            return [self.value] * len(range(*position.indices(self.count)))
        if not -self.count <= position < self.count:
            raise IndexError(position)
        return self.value

    def __iter__(self) -> Iterator[Any]:
        return itertools.repeat(self.value, self.count)


#: the columns a frozen copy keeps (a ``Node``'s fields; every slot of a copy is alive)
_FROZEN_COLUMNS = ("status", "last_seen", "load", "registered_at", "isolated", "last_rollback", "trust", "tier")


def _one_value(values: np.ndarray) -> np.ndarray | None:
    """``values`` as their one value broadcast (read only, no memory per slot) when they
    are all one value (NaN included); None otherwise."""
    if len(values) < 2:
        return None
    first = values[:1].copy()
    v = first[0]
    if values.dtype.kind == "f" and v != v:
        same = bool(np.isnan(values).all())
    else:
        same = not bool((values != v).any())
    return np.broadcast_to(first, values.shape) if same else None


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


def _same(value: Any) -> Any:
    return value
