"""Views of the node table (``nodetable.NodeTable``): ``Node`` objects over its columns.

Code that wants a ``Node`` gets a ``NodeView``: a ``Node`` whose fields read and write
the columns, made only when asked for. A view holds its node's id, and a view whose
node left (its slot now someone else's) raises ``LookupError`` instead of reading
another node's fields. Builtin steps read the columns themselves (``NodeTable`` and
``NodeList.slots``).

* ``NodeList``: the registered nodes at the start of a step, as views made when read.
* ``FrozenNodes``: a table copied at a moment (``NodeTable.freeze``), a read-only
  sequence of ``Node`` values made as they are read: the tick report's nodes.
* ``node_value``: one slot as a detached ``Node`` value.

A view reads a table through its columns and a few of its methods only; this module
sits below ``nodetable``, which makes the views and re-exports them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from wyneos_core.model import Node, NodeStatus
from wyneos_core.nodecodes import ONLINE, STATUS_CODE, STATUSES

if TYPE_CHECKING:
    from wyneos_core.nodetable import NodeTable

__all__ = ["FrozenNodes", "NodeList", "NodeView", "node_value"]

_NAN = float("nan")


def _opt(value: float) -> float | None:
    return None if value != value else value  # NaN is "none"


def node_value(t: NodeTable, slot: int, node_id: Any) -> Node:
    """The node in ``slot`` of table ``t`` as a detached ``Node`` value."""
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
    licence_ref = _column("licence_ref")
    fingerprint = _column("fingerprint")

    @property  # type: ignore[override]
    def metadata(self) -> dict[str, Any]:
        """The node's metadata mapping: replace it (``node.metadata = {...}``) to change it;
        the table notes a replacement, not a change made in place (see the module docstring)."""
        return self._t.metadata[self._slot()]  # type: ignore[return-value]

    @metadata.setter
    def metadata(self, value: Mapping[str, Any]) -> None:
        self._t.metadata[self._slot()] = value  # type: ignore[assignment]  # stored shared and frozen

    def snapshot(self) -> Node:
        return node_value(self._t, self._slot(), self._id)

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
        """The nodes' ids in order (one list, no views: shared, never change it)."""
        if self._ids is None:
            t = self.table
            whole = len(self.slots) == len(t.ids) and self.slots is t._slots and t._slots_version == t.membership
            self._ids = t.ids_copy() if whole else t.ids_at(self.slots)
        return self._ids


class FrozenNodes(Sequence[Node]):
    """Nodes copied at a moment (``NodeTable.freeze``): ``Node`` values made when read."""

    __slots__ = ("table", "__weakref__")

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
        return (node_value(t, i, node_id) for i, node_id in enumerate(t.ids))

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

