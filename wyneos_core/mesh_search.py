"""Searches over a snapshot of the mesh's arrays: routing trees and partitions.

``MeshArrays`` is one immutable snapshot of the mesh's adjacency (CSR, both directions
of every physical edge), made by ``Mesh.arrays()``; its searches run in scipy's
``csgraph``. ``ArrayParents`` reads a tree's parents from the predecessor array of a
search, never copying them into a dict of a million entries; ``RoutingTree`` is what the
tick's steps share (see ``wyneos_core.mesh``).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components

from wyneos_core.model import ORIGIN

__all__ = ["ArrayParents", "MeshArrays", "RoutingTree"]


class MeshArrays:
    """One immutable snapshot of the mesh's adjacency: vertex names by number (``None``
    for a free number), the live name-to-number map, and the CSR of every physical edge
    in both directions (isolated vertices' cut edges included, see the module docstring).
    Old snapshots stay valid for the trees made from them."""

    __slots__ = ("names", "index", "indptr", "indices", "alive", "version")

    def __init__(self, names: list[str | None], index: Mapping[str, int], indptr: np.ndarray,
                 indices: np.ndarray, alive: np.ndarray, version: int) -> None:
        for array in (indptr, indices, alive):
            array.flags.writeable = False  # shared by every tree made from it: never changed
        self.names = names
        self.index = index
        self.indptr = indptr
        self.indices = indices
        self.alive = alive
        self.version = version

    def __len__(self) -> int:
        return len(self.names)

    def number(self, vertex: object) -> int | None:
        """The vertex's number in this snapshot (None: not in it)."""
        i = self.index.get(vertex)  # type: ignore[call-overload]
        return i if i is not None and i < len(self.names) and self.names[i] == vertex else None

    def rows(self) -> np.ndarray:
        """The row (source vertex) of every entry of ``indices``."""
        return np.repeat(np.arange(len(self.names), dtype=np.int32), np.diff(self.indptr))

    def mask(self, vertices: Iterable[str]) -> np.ndarray:
        """A boolean mask over the vertices with ``vertices`` (those in the mesh) set."""
        out = np.zeros(len(self.names), bool)
        number = self.number
        picked = [i for i in map(number, vertices) if i is not None]
        out[picked] = True
        return out

    def search(self, blocked: np.ndarray | None) -> np.ndarray:
        """Predecessors of a breadth-first search from the origin not entering ``blocked``
        vertices (negative: not reached; the origin has none)."""
        n = len(self.names)
        indptr, indices = self.indptr, self.indices
        if blocked is not None and blocked.any():
            # a blocked vertex loses its own edges: reached, it relays nothing (unset below)
            degree = np.diff(indptr)
            indices = indices[np.repeat(~blocked, degree)]
            indptr = np.zeros(n + 1, np.int64)
            np.cumsum(np.where(blocked, 0, degree), out=indptr[1:])
        # float64 weights: csgraph's own type, so it takes the arrays as they are (no copy
        # of the edges, and each vertex's neighbours searched in the mesh's order)
        graph = csr_matrix((np.ones(len(indices)), indices, indptr), shape=(n, n))
        _, pred = breadth_first_order(graph, 0, directed=True, return_predecessors=True)
        if blocked is not None:
            pred[blocked] = -9999
        return pred

    def components(self, within: np.ndarray) -> list[list[str]]:
        """The connected groups of the ``within`` vertices (edges among them only)."""
        rows, cols = self.rows(), self.indices
        keep = within[rows] & within[cols]
        n = len(self.names)
        graph = csr_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        picked = np.flatnonzero(within)
        groups: dict[int, list[str]] = {}
        names = self.names
        for i, label in zip(picked.tolist(), labels[picked].tolist()):
            groups.setdefault(label, []).append(names[i])  # type: ignore[arg-type]
        return [sorted(g) for g in groups.values()]


class ArrayParents(Mapping[str, str]):
    """Read-only ``{vertex: parent}`` of a search, backed by its predecessor array."""

    __slots__ = ("_arrays", "_pred")

    def __init__(self, arrays: MeshArrays, pred: np.ndarray) -> None:
        self._arrays = arrays
        self._pred = pred

    def __getitem__(self, vertex: str) -> str:
        parent = self.get(vertex)
        if parent is None:
            raise KeyError(vertex)
        return parent  # type: ignore[no-any-return]

    def get(self, vertex: str, default: Any = None) -> Any:
        names = self._arrays.names  # MeshArrays.number, inlined: the hot lookup of delivery
        i = self._arrays.index.get(vertex)
        if i is None or i >= len(names) or names[i] != vertex:
            return default
        p = int(self._pred[i])
        return default if p < 0 else names[p]

    def __contains__(self, vertex: object) -> bool:
        names = self._arrays.names
        i = self._arrays.index.get(vertex)  # type: ignore[call-overload]
        return i is not None and i < len(names) and names[i] == vertex and self._pred[i] >= 0

    def path(self, vertex: str) -> list[str]:
        """Hops from the origin to ``vertex`` (``[]`` when it has no parent), walked in
        vertex numbers."""
        arrays = self._arrays
        i = arrays.number(vertex)
        pred = self._pred
        if i is None or pred[i] < 0:
            return []
        hops = [i]
        while i != 0:
            i = int(pred[i])
            hops.append(i)
        names = arrays.names
        return [names[j] for j in reversed(hops)]  # type: ignore[misc]

    @classmethod
    def of(cls, parent: Mapping[str, str]) -> ArrayParents:
        """The same tree as arrays, from ``{vertex: parent}`` (the origin numbered 0)."""
        names: list[str | None] = [ORIGIN, *(v for v in parent if v != ORIGIN)]
        index = {v: i for i, v in enumerate(names)}
        pred = np.fromiter((-9999 if v == ORIGIN else index[parent[v]] for v in names), np.int32, len(names))  # type: ignore[index]
        none = np.zeros(0, np.int32)
        arrays = MeshArrays(names, index, np.zeros(len(names) + 1, np.int64), none, np.ones(len(names), bool), -1)
        return cls(arrays, pred)

    @property
    def arrays(self) -> MeshArrays:
        """The snapshot the tree was searched in (its vertex numbers and names)."""
        return self._arrays

    @property
    def pred(self) -> np.ndarray:
        """The predecessor array, by vertex number (negative: no parent; read only)."""
        return self._pred

    def numbers(self, vertices: Iterable[str]) -> np.ndarray:
        """Vertex numbers of ``vertices`` in the tree's snapshot (-1: not in it)."""
        arrays = self._arrays
        names, size = arrays.names, len(arrays.names)
        vertices = vertices if isinstance(vertices, list) else list(vertices)
        bulk = getattr(arrays.index, "numbers", None)  # a NameIndex looks names up in bulk
        if bulk is None:
            get = arrays.index.get
            found = [i if (i := get(v, -1)) >= 0 and i < size and names[i] == v else -1 for v in vertices]
            return np.array(found, np.int64)
        found = bulk(vertices)
        # the index is the live mesh's: a number counts only if the snapshot has that name there
        found[found >= size] = -1
        same = list(map(operator.eq, map(names.__getitem__, np.maximum(found, 0).tolist()), vertices))
        found[~np.array(same, bool)] = -1
        return found

    def reached_neighbours(self, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The neighbours of each vertex number (negative: none) in the snapshot that the
        tree reaches, all at once: ``(position in numbers, neighbour number)`` pairs, each
        vertex's in the snapshot's order."""
        arrays, pred = self._arrays, self._pred
        numbers = np.asarray(numbers, np.int64)
        picked = np.flatnonzero(numbers >= 0)
        starts = arrays.indptr[numbers[picked]]
        counts = arrays.indptr[numbers[picked] + 1] - starts
        owner = np.repeat(picked, counts)
        # each entry's place in indices: its vertex's start plus its rank among that vertex's
        offsets = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
        neighbour = arrays.indices[np.repeat(starts, counts) + offsets].astype(np.int64)
        keep = (neighbour > 0) & (pred[neighbour] >= 0)
        return owner[keep], neighbour[keep]

    def depths(self, numbers: np.ndarray) -> np.ndarray:
        """Hops from the origin to each vertex number (-1: no parent; the origin 0): the
        tree walked up for all of them at once, one step per level."""
        pred = self._pred
        numbers = np.asarray(numbers, np.int64)
        out = np.full(len(numbers), -1, np.int64)
        safe = np.where(numbers >= 0, numbers, 0)
        reached = (numbers >= 0) & ((safe == 0) | (pred[safe] >= 0))
        out[reached] = 0
        walking = np.flatnonzero(reached & (safe > 0))
        cur = safe[walking]
        while len(walking):
            out[walking] += 1
            cur = pred[cur]
            up = cur > 0
            walking, cur = walking[up], cur[up]
        return out

    def paths(self, numbers: np.ndarray) -> list[list[str]]:
        """``path`` of each vertex number (``[]``: no parent, or not in the snapshot), the
        tree walked up for all of them at once."""
        numbers = np.asarray(numbers, np.int64)
        depth = self.depths(numbers)
        if not len(numbers):
            return []
        top = int(depth.max())
        if top < 0:
            return [[] for _ in range(len(numbers))]
        steps = np.zeros((len(numbers), top + 1), np.int64)  # vertex numbers, origin first
        rows = np.arange(len(numbers))
        cur = np.where(depth >= 0, numbers, 0)
        pred = self._pred
        for k in range(top + 1):
            col = depth - k
            at = col >= 0
            steps[rows[at], col[at]] = cur[at]
            cur = np.where(cur > 0, pred[np.maximum(cur, 0)], 0)
        names = self._arrays.names
        return [[names[j] for j in row[:d + 1]] if d >= 0 else []  # type: ignore[misc]
                for row, d in zip(steps.tolist(), depth.tolist())]

    def unreached(self) -> list[str]:
        """The vertices without a parent, the origin left out."""
        names = self._arrays.names
        missed = np.flatnonzero((self._pred < 0) & self._arrays.alive)
        return [names[i] for i in missed.tolist() if i != 0]  # type: ignore[misc]

    def children(self, vertex: str) -> list[str]:
        """The vertices whose parent is ``vertex`` (one pass over the array)."""
        i = self._arrays.number(vertex)
        if i is None:
            return []
        names = self._arrays.names
        return [names[j] for j in np.flatnonzero(self._pred == i).tolist()]  # type: ignore[misc]

    def reached(self) -> np.ndarray:
        """Numbers (into ``MeshArrays.names``) of the vertices that have a parent."""
        return np.flatnonzero(self._pred >= 0)

    def __iter__(self) -> Iterator[str]:
        names = self._arrays.names
        return (names[i] for i in self.reached().tolist())  # type: ignore[misc]

    def __len__(self) -> int:
        return int(np.count_nonzero(self._pred >= 0))

    def items(self) -> Any:  # one pass over the arrays, not a lookup per key
        names, reached = self._arrays.names, self.reached()
        return list(zip([names[i] for i in reached.tolist()], [names[p] for p in self._pred[reached].tolist()]))


@dataclass(slots=True)
class RoutingTree:
    """Parents of every vertex reachable from the origin over healthy vertices."""

    parent: Mapping[str, str]
    avoided: dict[str, str] = field(default_factory=dict)  # vertex -> why it was routed around

    def reachable(self, node_id: str) -> bool:
        return node_id == ORIGIN or node_id in self.parent

    def path(self, node_id: str) -> list[str]:
        """Hops from the origin to ``node_id`` (``[]`` when unreachable)."""
        if node_id == ORIGIN:
            return [ORIGIN]
        parent = self.parent
        if isinstance(parent, ArrayParents):
            return parent.path(node_id)
        if node_id not in parent:
            return []
        hops = [node_id]
        while hops[-1] != ORIGIN:
            hops.append(parent[hops[-1]])
        hops.reverse()
        return hops

    def depth(self, node_id: str) -> int:
        return len(self.path(node_id)) - 1
