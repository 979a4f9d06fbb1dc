"""The fleet as a table: one typed column per node field, indexed by a stable slot.

The registry keeps its nodes here instead of one Python object per node. Every field the
tick reads has its column (numpy arrays: status as a small code, last heartbeat, load,
registration time, isolation, last clock rollback, trust and its tier as a code); ids
live in one list with an id-to-slot index; metadata, licence reference and fingerprint
in plain lists by slot (each node its own metadata mapping, as a ``Node`` has). A node that
leaves frees its slot, which the next node to join takes.

Code that wants a ``Node`` gets a ``NodeView``: a ``Node`` whose fields read and write
the columns, made only when asked for. A view holds its node's id, and a view whose
node left (its slot now someone else's) raises ``LookupError`` instead of reading
another node's fields. Builtin steps read the columns themselves (``NodeTable`` and
``NodeList.slots``).

``freeze()`` copies the columns at a moment (the end of a tick) into ``FrozenNodes``, a
read-only sequence of ``Node`` values made as they are read: the tick report's nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from wyneos_core.model import Node, NodeStatus

__all__ = ["FrozenNodes", "NodeList", "NodeTable", "NodeView", "STATUSES", "STATUS_CODE", "TIERS"]

#: status codes, in the order of the ``status`` column's values
STATUSES: tuple[NodeStatus, ...] = (NodeStatus.ONLINE, NodeStatus.STALE, NodeStatus.OFFLINE, NodeStatus.UNKNOWN)
STATUS_CODE = {s: i for i, s in enumerate(STATUSES)}
ONLINE, STALE, OFFLINE, UNKNOWN = range(4)
#: the trust tiers the trust step gives, coded in the ``tier`` column (-1: none yet)
TIERS = ("untrusted", "probation", "trusted", "attested")
_EMPTY: Mapping[str, Any] = {}
_NAN = float("nan")


class NodeTable:
    """Columns of the registered nodes by slot (see the module docstring)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.ids: list[str | None] = []
        self.index: dict[str, int] = {}
        self.free: list[int] = []
        self.metadata: list[Mapping[str, Any]] = []
        self.licence_ref: list[str | None] = []
        self.fingerprint: list[str | None] = []
        self.tier_names: list[str] = list(TIERS)
        self._grow(max(16, capacity))
        #: bumped whenever a node joins or leaves (``NodeList`` and ``slots`` follow it)
        self.version = 0
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

    # -- membership -------------------------------------------------------------------

    def add(self, node_id: str, *, registered_at: float, metadata: Mapping[str, Any] | None = None,
            licence_ref: str | None = None, fingerprint: str | None = None) -> int:
        """A slot for a new node (a freed one first), its columns set to a new node's."""
        if self.free:
            slot = self.free.pop()
            self.ids[slot] = node_id
            self.metadata[slot] = dict(metadata or ())
            self.licence_ref[slot] = licence_ref
            self.fingerprint[slot] = fingerprint
        else:
            slot = len(self.ids)
            if slot >= len(self.status):
                self._grow(2 * len(self.status))
            self.ids.append(node_id)
            self.metadata.append(dict(metadata or ()))
            self.licence_ref.append(licence_ref)
            self.fingerprint.append(fingerprint)
        self.index[node_id] = slot
        self.status[slot] = UNKNOWN
        self.last_seen[slot] = _NAN
        self.load[slot] = _NAN
        self.registered_at[slot] = registered_at
        self.isolated[slot] = False
        self.last_rollback[slot] = _NAN
        self.trust[slot] = _NAN
        self.tier[slot] = -1
        self.alive[slot] = True
        self.version += 1
        return slot

    def remove(self, node_id: str) -> Node:
        """Free ``node_id``'s slot; return its last fields as a ``Node`` value."""
        slot = self.index.pop(node_id)
        value = self.value(slot)
        self.ids[slot] = None
        self.metadata[slot] = _EMPTY
        self.licence_ref[slot] = None
        self.fingerprint[slot] = None
        self.alive[slot] = False
        self.free.append(slot)
        self.version += 1
        return value

    def __len__(self) -> int:
        return len(self.index)

    def slots(self) -> np.ndarray:
        """The slots of the registered nodes, in slot order (cached until one joins or leaves)."""
        if self._slots is None or self._slots_version != self.version:
            self._slots = np.flatnonzero(self.alive[:len(self.ids)])
            self._slots_version = self.version
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
        return _node(self, slot, self.ids[slot])

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
        """The registered nodes' fields now, copied (the columns go on changing)."""
        slots = self.slots()
        frozen = NodeTable.__new__(NodeTable)
        frozen.ids = [self.ids[s] for s in slots.tolist()]
        frozen.metadata = [self.metadata[s] for s in slots.tolist()]
        frozen.licence_ref = [self.licence_ref[s] for s in slots.tolist()]
        frozen.fingerprint = [self.fingerprint[s] for s in slots.tolist()]
        frozen.tier_names = list(self.tier_names)
        for name in ("status", "last_seen", "load", "registered_at", "isolated", "last_rollback", "trust", "tier",
                     "alive"):
            setattr(frozen, name, getattr(self, name)[slots])
        frozen.free = []
        frozen.version = 0
        frozen._slots = None
        frozen.index = {}
        return FrozenNodes(frozen)


def _opt(value: float) -> float | None:
    return None if value != value else value  # NaN is "none"


def _node(t: NodeTable, slot: int, node_id: Any) -> Node:
    tier = int(t.tier[slot])
    return Node(node_id, STATUSES[t.status[slot]], _opt(t.last_seen.item(slot)), _opt(t.load.item(slot)),
                t.metadata[slot], t.licence_ref[slot], t.fingerprint[slot], t.registered_at.item(slot),
                bool(t.isolated[slot]), _opt(t.last_rollback.item(slot)), _opt(t.trust.item(slot)),
                None if tier < 0 else t.tier_names[tier])


def _opt_of(t: NodeTable, v: Any) -> float | None:
    return None if v != v else float(v)


def _nan_of(t: NodeTable, v: float | None) -> float:
    return _NAN if v is None else v


def _column(name: str, read: Any = None, write: Any = None) -> property:
    """A ``Node`` field as a property reading and writing the table's column ``name``
    (``read``/``write`` convert between the column's values and the field's)."""

    def get(self: NodeView) -> Any:
        t = self._t
        value = getattr(t, name)[self._slot()]
        return value if read is None else read(t, value)

    def put(self: NodeView, value: Any) -> None:
        t = self._t
        getattr(t, name)[self._slot()] = value if write is None else write(t, value)

    return property(get, put)


class NodeView(Node):
    """A ``Node`` whose fields are a ``NodeTable``'s columns (see the module docstring)."""

    __slots__ = ("_t", "_s", "_id")

    def _slot(self) -> int:
        s = self._s
        if self._t.ids[s] is not self._id:
            raise LookupError(f"node {self._id!r} left the registry")
        return s

    @property  # type: ignore[override]
    def id(self) -> str:
        return self._id

    status = _column("status", lambda t, v: STATUSES[v], lambda t, v: STATUS_CODE[NodeStatus(v)])
    last_seen = _column("last_seen", _opt_of, _nan_of)
    load = _column("load", _opt_of, _nan_of)
    registered_at = _column("registered_at", lambda t, v: float(v), lambda t, v: v)
    isolated = _column("isolated", lambda t, v: bool(v), lambda t, v: bool(v))
    last_rollback = _column("last_rollback", _opt_of, _nan_of)
    trust = _column("trust", _opt_of, _nan_of)
    trust_tier = _column("tier", lambda t, v: None if v < 0 else t.tier_names[v], lambda t, v: t.tier_code(v))
    metadata = _column("metadata")
    licence_ref = _column("licence_ref")
    fingerprint = _column("fingerprint")

    def snapshot(self) -> Node:
        return _node(self._t, self._slot(), self._id)

    def __eq__(self, other: object) -> bool:
        """Views are equal when they are of the same node of the same table (never read:
        a view of a node that left compares without raising)."""
        if type(other) is NodeView:
            return self._t is other._t and self._id is other._id
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as Node

    def __repr__(self) -> str:
        return "View" + repr(self.snapshot())


class NodeList(Sequence[Node]):
    """The registered nodes at the start of a step, as views made when read.

    ``table`` and ``slots`` give the columns: position ``i`` is slot ``slots[i]``.
    """

    __slots__ = ("table", "slots", "_ids")

    def __init__(self, table: NodeTable, slots: np.ndarray | None = None) -> None:
        self.table = table
        self.slots = table.slots() if slots is None else slots
        self._ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, position: Any) -> Any:
        if isinstance(position, slice):
            return NodeList(self.table, self.slots[position])
        return self.table.view(int(self.slots[position]))

    def __iter__(self) -> Iterator[Node]:
        view = self.table.view
        return map(view, self.slots.tolist())

    def ids(self) -> list[str]:
        """The nodes' ids in order (one list, no views)."""
        if self._ids is None:
            ids = self.table.ids
            self._ids = [ids[s] for s in self.slots.tolist()]  # type: ignore[misc]
        return self._ids


class FrozenNodes(Sequence[Node]):
    """Nodes copied at a moment (``NodeTable.freeze``): ``Node`` values made when read."""

    __slots__ = ("table",)

    def __init__(self, table: NodeTable) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table.ids)

    def __getitem__(self, position: Any) -> Any:
        if isinstance(position, slice):
            return [self.table.value(i) for i in range(len(self))[position]]
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(position)
        return self.table.value(position)

    def __iter__(self) -> Iterator[Node]:
        t = self.table
        return (_node(t, i, node_id) for i, node_id in enumerate(t.ids))

    def ids(self) -> list[str]:
        return self.table.ids  # type: ignore[return-value]

    def status_counts(self) -> dict[str, int]:
        return self.table.status_counts(np.arange(len(self)))

    def select(self, positions: Iterable[int]) -> list[Node]:
        return [self.table.value(i) for i in positions]

    def worth_a_look(self, changed: set[str]) -> list[Node]:
        """The nodes not online, isolated, or in ``changed``."""
        t = self.table
        mask = (t.status != ONLINE) | t.isolated
        picked = set(np.flatnonzero(mask).tolist())
        if changed:
            picked.update(i for i, node_id in enumerate(t.ids) if node_id in changed)
        return self.select(sorted(picked))

    def with_ids(self, wanted: set[str]) -> list[Node]:
        if not wanted:
            return []
        return self.select(i for i, node_id in enumerate(self.table.ids) if node_id in wanted)
