"""What the read endpoints show: the ``ClusterView`` published after each tick.

Publishing costs nothing per node: the view holds the tick's ``FrozenNodes`` (the
columns as the tick left them, copied once by the tick for its report) behind a
``NodeMap``, which makes a ``Node`` value only when a reader asks for one, and builds
its id index (a ``NameIndex``, about 16 bytes an id) on the first lookup by id (a
reader's cost, once per view, never the tick's).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wyneos_core.model import Node, TickReport
from wyneos_core.names import NameIndex

__all__ = ["ClusterView", "NodeMap"]


class NodeMap(Mapping[str, Node]):
    """Nodes by id over a sequence of nodes (``FrozenNodes``, or a list of ``Node``),
    in their order; the sequence is never changed."""

    __slots__ = ("_nodes", "_ids", "_index")

    def __init__(self, nodes: Sequence[Node]) -> None:
        self._nodes = nodes
        ids = getattr(nodes, "ids", None)
        self._ids: list[str] | None = ids() if ids is not None else None
        self._index: NameIndex | None = None

    def _order(self) -> list[str]:
        if self._ids is None:
            self._ids = [n.id for n in self._nodes]
        return self._ids

    def _positions(self) -> NameIndex:
        index = self._index
        if index is None:  # two readers at once may both build it: the same index, harmless
            index = self._index = NameIndex(self._order())  # type: ignore[arg-type]
        return index

    def __getitem__(self, node_id: str) -> Node:
        return self._nodes[self._positions()[node_id]]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._positions()

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[str]:
        return iter(self._order())

    def values(self) -> Sequence[Node]:  # type: ignore[override]
        """The nodes in order, each made when read (no lookup by id)."""
        return self._nodes

    def items(self) -> Iterator[tuple[str, Node]]:  # type: ignore[override]
        return zip(self._order(), self._nodes)


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the read endpoints show: a snapshot published after each tick.

    Nothing in it changes after it is published (the nodes are the tick's frozen copy),
    so readers use it without any lock while the next tick runs.
    """

    tick: int
    nodes: Mapping[str, Node]
    report: TickReport | None
    #: ``{target: {action id, ...}}`` of the actions in force
    in_force: dict[str, frozenset[str]] = field(default_factory=dict)
    #: the mesh as the dashboard draws it, when a recent request asked for it
    mesh: dict[str, Any] | None = None
