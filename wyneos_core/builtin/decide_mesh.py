"""What the mesh says to the builtin decide step: the nodes in a partition, those only
the orchestrator's own isolations cut off, and whom an isolation would strand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wyneos_core.mesh import ArrayParents
from wyneos_core.model import ORIGIN

if TYPE_CHECKING:
    from wyneos_core.tick import TickContext

__all__ = ["TreeChildren", "partitioned_nodes", "stranded_nodes", "tree_children", "would_strand"]



def partitioned_nodes(ctx: TickContext) -> set[str]:
    mesh = ctx.mesh
    reach = ctx.mesh_tree().parent
    isolated = mesh.isolated
    registry = ctx.registry
    if isinstance(reach, ArrayParents):  # the few vertices without a path, from the arrays
        return {v for v in reach.unreached() if v not in isolated and v in registry}
    return {n.id for n in registry if n.id not in reach and n.id not in isolated and n.id in mesh}


def stranded_nodes(ctx: TickContext, partitioned: set[str]) -> set[str]:
    """The nodes of ``partitioned`` that only the orchestrator's own isolations cut off:
    they would have a mesh path again if the isolated nodes' edges were back."""
    if not partitioned or not ctx.mesh.isolated:
        return set()
    return partitioned & ctx.mesh.reachable_if_reinstated()


def would_strand(ctx: TickContext, target: str, blocked: set[str], children: Any) -> list[str]:
    """The vertices that cutting ``target`` (with ``blocked`` cut too) would leave without
    a mesh path to the orchestrator.

    Searches outward from ``target``'s children in the tick's structural tree and stops
    at the first vertex whose tree path avoids ``target`` and ``blocked`` (a way in),
    so on a well-meshed cluster it looks at a handful of vertices.

    :param children: the structural tree's children by parent (see ``tree_children``).
    """
    parent = ctx.mesh_tree().parent
    neighbours = ctx.mesh.neighbours
    cut = blocked | {target}

    def way_in(v: str) -> bool:
        while v != ORIGIN:
            if v in cut:
                return False
            nxt = parent.get(v)
            if nxt is None:
                return False
            v = nxt
        return True

    escaped: set[str] = set()
    stranded: list[str] = []
    for child in children.get(target, ()):
        if child in escaped or child in cut:
            continue
        seen = {child}
        frontier = [child]
        ok = False
        while frontier and not ok:
            nxt = []
            for v in frontier:
                for w in neighbours(v):
                    if w in seen or w in cut:
                        continue
                    if w in escaped or way_in(w):
                        ok = True
                        break
                    seen.add(w)
                    nxt.append(w)
                if ok:
                    break
            frontier = nxt
        if ok:
            escaped |= seen
        else:
            stranded.extend(seen)
    return stranded


class TreeChildren:
    """The structural tree's children by parent, found when asked (``get``)."""

    __slots__ = ("parent", "_by_parent")

    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self._by_parent: dict[str, list[str]] | None = None

    def get(self, vertex: str, default: Any = ()) -> Any:
        if isinstance(self.parent, ArrayParents):
            return self.parent.children(vertex) or default
        if self._by_parent is None:
            self._by_parent = {}
            for v, p in self.parent.items():
                self._by_parent.setdefault(p, []).append(v)
        return self._by_parent.get(vertex, default)


def tree_children(ctx: TickContext) -> TreeChildren:
    return TreeChildren(ctx.mesh_tree().parent)
