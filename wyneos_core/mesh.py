"""The mesh: the nodes' communication graph plus the orchestrator as origin, kept as arrays.

**Store.** Vertices are numbered (the orchestrator is 0): names by number, a
name-to-number map, an ``isolated`` boolean array, and the edges as a compressed sparse
row adjacency (``MeshArrays``: ``indptr``, ``indices``, both directions of every edge).
The edges are the *physical* ones: an isolated vertex keeps its edges in the store (its
"cut edges"), they simply do not count while it is isolated, so isolating and
reinstating (every tick in a failing cluster) only flip one boolean. Changes of shape
(a node joins or leaves, a link fails or heals) go into two small overlays (edges added
since, edges gone since) and are folded into a new CSR, with numpy, at the next search.
A removed vertex's number is given to the next vertex that joins. No Python object is
held per vertex beyond its name: the name map is a ``NameIndex`` (``wyneos_core.names``:
``int32`` numbers in an open-addressing table over the names list, about 16 bytes a
vertex where a dict took about 70).

**Routing** is one breadth-first tree per tick from the origin over healthy vertices
(not a search per action), in scipy's ``csgraph``: O(nodes + edges) per tick. A tree's
parents are read from the predecessor array (``ArrayParents``), never copied into a
dict of a million entries. Vertices that are offline are routed around for the tick
without changing the mesh.

**networkx stays the API.** ``Mesh.graph`` is a live ``networkx.Graph`` view of the
mesh (``wyneos_core.mesh_graph.MeshGraph``): every networkx read and algorithm works on
it, and its changes (``remove_edge``, ``add_edge``, ``add_node``, ``remove_node``...)
are written through to the arrays, so a test or a simulated link failure that edits the
graph reaches the next search. It shows the edges that count: an isolated vertex has
none.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import networkx as nx
import numpy as np

from wyneos_core import mesh_topology
from wyneos_core.mesh_graph import MeshGraph
from wyneos_core.mesh_search import ArrayParents, MeshArrays, RoutingTree
from wyneos_core.model import ORIGIN
from wyneos_core.names import NameIndex

__all__ = ["ArrayParents", "Mesh", "MeshArrays", "MeshError", "RoutingTree", "build_topology", "TOPOLOGIES"]

TOPOLOGIES = ("explicit", "ring", "star", "random_regular", "small_world", "full")
_NONE = np.zeros(0, np.int32)


class MeshError(ValueError):
    """A mesh that cannot be built or an operation on a vertex it does not have."""


class Mesh:
    """The cluster's communication graph (see the module docstring for how it is kept).

    >>> m = Mesh()
    >>> m.add_edges([("orchestrator", "a"), ("a", "b")])
    >>> m.routing_tree().path("b")
    ['orchestrator', 'a', 'b']
    >>> m.graph.remove_edge("a", "b")  # networkx, written through
    >>> m.routing_tree().reachable("b")
    False
    """

    __slots__ = ("_names", "_index", "_free", "_alive", "_isolated", "_state", "_version",
                 "_cuts", "_isolated_names", "_graph", "attributes")

    def __init__(self, graph: nx.Graph | None = None) -> None:
        self._names: list[str | None] = [ORIGIN]
        self._index = NameIndex(self._names)
        self._free: list[int] = []
        self._alive = np.ones(1, bool)
        self._isolated = np.zeros(1, bool)
        #: the last snapshot and the changes since: vertex -> neighbours gained, and the
        #: snapshot's edges (low, high) removed; one tuple, replaced in one step, so a reader
        #: in another thread (the service's views) never pairs a snapshot with older changes
        self._state: tuple[MeshArrays, dict[int, list[int]], set[tuple[int, int]]] = (
            MeshArrays([ORIGIN], self._index, np.zeros(2, np.int64), _NONE, self._alive.copy(), 0), {}, set())
        self._version = 0
        self._cuts = 0  # isolations and reinstatements (``generation``)
        self._isolated_names: frozenset[str] | None = frozenset()
        self._graph: MeshGraph | None = None
        #: the networkx view's graph attributes (``mesh.graph.graph``)
        self.attributes: dict[str, Any] = {}
        if graph is not None:
            self.add_nodes(graph.nodes)
            self.add_edges(graph.edges)

    @property
    def _base(self) -> MeshArrays:
        return self._state[0]

    @property
    def _added(self) -> dict[int, list[int]]:
        return self._state[1]

    @property
    def _gone(self) -> set[tuple[int, int]]:
        return self._state[2]

    @classmethod
    def from_arrays(cls, names: Sequence[str], a: np.ndarray, b: np.ndarray) -> Mesh:
        """A mesh of ``names`` (vertex ``i + 1`` is ``names[i]``; 0 is the orchestrator)
        and the edges ``a[j] - b[j]`` given by vertex number: no self-loop, no
        duplicate (the generators of ``mesh_topology`` guarantee both)."""
        mesh = cls()
        mesh.add_nodes(names)
        n = len(mesh._names)
        if n != len(names) + 1:
            raise MeshError("duplicate vertex names (or the orchestrator's) in the node list")
        a = np.asarray(a, np.int32)
        b = np.asarray(b, np.int32)
        if len(a) and (int(min(a.min(), b.min())) < 0 or int(max(a.max(), b.max())) >= n):
            raise MeshError("edge ends outside the vertices")
        # both directions of each edge, in edge order, sorted stably by source vertex
        rows = np.stack([a, b], 1).ravel()
        cols = np.stack([b, a], 1).ravel()
        del a, b
        order = np.argsort(rows, kind="stable")
        indices = cols[order]
        del cols, order
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        mesh._version += 1
        mesh._state = (MeshArrays(list(mesh._names), mesh._index, indptr, indices, mesh._alive[:n].copy(),
                                  mesh._version), {}, set())
        return mesh

    # -- the snapshot ----------------------------------------------------------------------

    def arrays(self) -> MeshArrays:
        """The adjacency as arrays, folded anew only after the mesh's shape changed.

        Changes and searches belong to one thread (the tick's); another thread may read
        neighbours and the networkx view at any time."""
        state, version = self._state, self._version
        base, added, gone = state
        if base.version == version:
            return base
        n = len(self._names)
        names, alive = list(self._names), self._alive[:n].copy()
        if not gone and not added:  # vertices joined or left, no edge changed
            indptr = np.concatenate([base.indptr, np.full(n - len(base.names), base.indptr[-1])])
            fresh = MeshArrays(names, self._index, indptr, base.indices, alive, version)
        else:
            rows, cols = base.rows(), base.indices
            if gone:
                keys = np.fromiter((lo << 32 | hi for lo, hi in gone), np.int64, len(gone))
                keys.sort()
                pairs = (np.minimum(rows, cols).astype(np.int64) << 32) | np.maximum(rows, cols)
                keep = keys[np.minimum(np.searchsorted(keys, pairs), len(keys) - 1)] != pairs
                rows, cols = rows[keep], cols[keep]
            if added:
                rows = np.concatenate([rows, np.fromiter((v for v, ws in added.items() for _ in ws), np.int32)])
                cols = np.concatenate([cols, np.fromiter((w for ws in added.values() for w in ws), np.int32)])
            order = np.argsort(rows, kind="stable")  # old edges first, then new ones, per vertex
            indptr = np.zeros(n + 1, np.int64)
            np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
            fresh = MeshArrays(names, self._index, indptr, cols[order], alive, version)
        if self._state is state and self._version == version:  # nothing changed meanwhile
            self._state = (fresh, {}, set())
        return fresh

    # -- vertices --------------------------------------------------------------------------

    def numbers(self, node_ids: Sequence[object]) -> np.ndarray:
        """The vertex numbers of ``node_ids`` in one bulk lookup (``int64``; -1: not in
        the mesh); the orchestrator is 0."""
        return self._index.numbers(node_ids)

    def _number(self, node_id: str) -> int:
        i = self._index.get(node_id)
        if i is None:
            raise MeshError(f"{node_id!r} is not in the mesh")
        return i

    def add_node(self, node_id: str) -> None:
        if node_id in self._index:
            return
        if not isinstance(node_id, str):
            raise MeshError(f"a mesh vertex is named by a string, not {type(node_id).__name__} {node_id!r}")
        self._version += 1
        if self._free:
            i = self._free.pop()
            self._names[i] = node_id
        else:
            i = len(self._names)
            self._names.append(node_id)
            if i >= len(self._alive):
                grow = max(16, i // 2)
                self._alive = np.concatenate([self._alive, np.zeros(grow, bool)])
                self._isolated = np.concatenate([self._isolated, np.zeros(grow, bool)])
        self._index.add(node_id, i)
        self._alive[i] = True
        self._isolated[i] = False

    def add_nodes(self, node_ids: Iterable[str]) -> None:
        """Add many vertices at once (those already in the mesh are skipped)."""
        node_ids = node_ids if isinstance(node_ids, Sequence) else list(node_ids)
        known = self._index.numbers(node_ids)
        fresh = [node_ids[k] for k in np.flatnonzero(known < 0).tolist()] if (known >= 0).any() else list(node_ids)
        if not fresh:
            return
        if self._free or not all(type(v) is str for v in fresh) or len(set(fresh)) != len(fresh):
            for v in fresh:  # free numbers first (a clear error for a bad name; a name twice once), one by one
                self.add_node(v)
            return
        start = len(self._names)
        end = start + len(fresh)
        self._version += 1
        self._names.extend(fresh)
        self._index.add_many(fresh, np.arange(start, end))
        if end > len(self._alive):
            grow = end - len(self._alive) + end // 8
            self._alive = np.concatenate([self._alive, np.zeros(grow, bool)])
            self._isolated = np.concatenate([self._isolated, np.zeros(grow, bool)])
        self._alive[start:end] = True
        self._isolated[start:end] = False

    def remove_node(self, node_id: str) -> None:
        """Take a vertex and its edges (cut ones included) out of the mesh."""
        if node_id == ORIGIN:
            raise MeshError("the orchestrator cannot be removed from the mesh")
        i = self._index.get(node_id)
        if i is None:
            return
        for j in self._links(i):
            self._unlink(i, j)
        self._version += 1
        self._index.remove(node_id)
        self._names[i] = None
        self._alive[i] = False
        if self._isolated[i]:
            self._isolated[i] = False
            self._isolated_names = None
        self._free.append(i)

    def vertices(self) -> list[str]:
        """Every vertex name, the orchestrator included (in number order)."""
        return [v for v in self._names if v is not None]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    # -- edges -----------------------------------------------------------------------------

    def _links(self, i: int) -> list[int]:
        """Numbers of the physical neighbours of vertex ``i`` (cut edges included)."""
        base, added, gone = self._state
        out = base.indices[base.indptr[i]:base.indptr[i + 1]].tolist() if i < len(base.names) else []
        if gone and out:
            out = [j for j in out if ((i, j) if i < j else (j, i)) not in gone]
        extra = added.get(i)
        return out + extra if extra else out

    def _linked(self, i: int, j: int) -> bool:
        indptr, n = self._base.indptr, len(self._base.names)
        if i < n and j < n and indptr[i + 1] - indptr[i] > indptr[j + 1] - indptr[j]:
            i, j = j, i  # look through the shorter list (the orchestrator's may hold every node)
        return j in self._links(i)

    def _link(self, i: int, j: int) -> bool:
        key = (i, j) if i < j else (j, i)
        if key in self._gone:
            self._gone.discard(key)
        elif self._linked(i, j):
            return False
        else:
            self._added.setdefault(i, []).append(j)
            self._added.setdefault(j, []).append(i)
        self._version += 1
        return True

    def _unlink(self, i: int, j: int) -> bool:
        added = self._added.get(i)
        if added is not None and j in added:
            added.remove(j)
            self._added[j].remove(i)
            for v in (i, j):
                if not self._added[v]:
                    del self._added[v]
        elif self._linked(i, j):
            self._gone.add((i, j) if i < j else (j, i))
        else:
            return False
        self._version += 1
        return True

    def add_edges(self, edges: Iterable[tuple[str, str]]) -> None:
        """Add edges (and their vertices, if new); an edge to an isolated vertex counts
        once it is reinstated."""
        for a, b in edges:
            if a == b:
                raise MeshError(f"edge from {a!r} to itself")
            self.add_node(a)
            self.add_node(b)
            self._link(self._index[a], self._index[b])

    def neighbours(self, node_id: str) -> list[str]:
        """The vertices ``node_id`` has a live edge to (none while it is isolated)."""
        i = self._number(node_id)
        iso = self._isolated
        if iso[i]:
            return []
        names = self._names
        return [names[j] for j in self._links(i) if not iso[j]]  # type: ignore[misc]

    def has_edge(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` have a live edge (neither isolated)."""
        i, j = self._index.get(a), self._index.get(b)
        if i is None or j is None or self._isolated[i] or self._isolated[j]:
            return False
        return self._linked(i, j)

    def edges(self, within: Collection[str] | None = None) -> list[tuple[str, str]]:
        """Every live edge once (neither end isolated), as name pairs; with ``within``,
        only the edges between those vertices (found from their neighbours)."""
        if within is not None:
            index = self._index
            picked = sorted(index[v] for v in within if v in index)
            names = self._names
            return [(names[i], w) for i in picked for w in self.neighbours(names[i])  # type: ignore[misc]
                    if w in within and index[w] > i]
        arrays = self.arrays()
        rows, cols = arrays.rows(), arrays.indices
        iso = self._isolated[:len(arrays.names)]
        keep = (rows < cols) & ~iso[rows] & ~iso[cols]
        names = arrays.names
        return [(names[i], names[j]) for i, j in zip(rows[keep].tolist(), cols[keep].tolist())]  # type: ignore[misc]

    def adjacency(self, order: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The live edges as CSR arrays ``(indptr, indices)`` over the positions of
        ``order`` (a vertex not in it is left out), each vertex's neighbours in the order
        ``neighbours`` gives them: for code that works over arrays of its own."""
        arrays = self.arrays()
        n = len(arrays.names)
        numbers = self._index.numbers(order)
        position = np.full(n, -1, np.int64)
        present = numbers >= 0
        position[numbers[present]] = np.flatnonzero(present)
        rows, cols = arrays.rows(), arrays.indices
        iso = self._isolated[:n]
        keep = ~iso[rows] & ~iso[cols] & (position[rows] >= 0) & (position[cols] >= 0)
        r, c = position[rows[keep]], position[cols[keep]]
        indptr = np.zeros(len(order) + 1, np.int64)
        np.cumsum(np.bincount(r, minlength=len(order)), out=indptr[1:])
        return indptr, c[np.argsort(r, kind="stable")].astype(np.int32)

    def number_of_edges(self) -> int:
        arrays = self.arrays()
        rows, cols = arrays.rows(), arrays.indices
        iso = self._isolated[:len(arrays.names)]
        return int(np.count_nonzero((rows < cols) & ~iso[rows] & ~iso[cols]))

    def cut_edge(self, a: str, b: str) -> None:
        """Remove one edge (a network fault), also an isolated node's cut one, so
        reinstating it cannot bring back a link the network no longer has."""
        i, j = self._index.get(a), self._index.get(b)
        if i is not None and j is not None:
            self._unlink(i, j)

    def restore_edge(self, a: str, b: str) -> None:
        """Bring one edge back (a fault healed); for an isolated end it waits for reinstate."""
        i, j = self._index.get(a), self._index.get(b)
        if i is not None and j is not None and i != j:
            self._link(i, j)

    @property
    def graph(self) -> MeshGraph:
        """The mesh as a live ``networkx.Graph`` (reads and changes go to the arrays)."""
        if self._graph is None:
            self._graph = MeshGraph(mesh=self)
        return self._graph

    # -- isolation -------------------------------------------------------------------------

    def isolate(self, node_id: str) -> list[str]:
        """Cut every edge of ``node_id``; return the neighbours it was cut from."""
        i = self._number(node_id)
        if i == 0:
            raise MeshError("the orchestrator cannot be isolated")
        if self._isolated[i]:
            return []
        cut = self.neighbours(node_id)
        self._isolated[i] = True
        self._cuts += 1
        self._isolated_names = None
        return cut

    def reinstate(self, node_id: str) -> list[str]:
        """Restore the edges cut by ``isolate`` (to neighbours not isolated themselves:
        an edge to another isolated vertex comes back when that one is reinstated)."""
        i = self._index.get(node_id)
        if i is None or not self._isolated[i]:
            return []
        self._isolated[i] = False
        self._cuts += 1
        self._isolated_names = None
        return self.neighbours(node_id)

    @property
    def kept_edges(self) -> Mapping[str, tuple[str, ...]]:
        """Isolated vertex -> the neighbours its isolation cut it from (read only)."""
        names = self._names
        return MappingProxyType({v: tuple(names[j] for j in self._links(self._index[v]))  # type: ignore[misc]
                                 for v in sorted(self.isolated, key=self._index.__getitem__)})

    def reachable_if_reinstated(self) -> set[str]:
        """Vertices that would have a path to the origin if every isolation were undone
        (the cut edges counted in both directions), origin included."""
        arrays = self.arrays()
        names = arrays.names
        reached = {names[i] for i in np.flatnonzero(arrays.search(None) >= 0).tolist()}
        reached.add(ORIGIN)
        return reached  # type: ignore[return-value]

    @property
    def generation(self) -> tuple[int, int]:
        """Changes whenever a vertex's live neighbours may have changed (vertices and edges
        added or removed, isolations and reinstatements); equal generations, equal
        ``neighbours`` for every vertex."""
        return self._version, self._cuts

    def is_isolated(self, node_id: str) -> bool:
        i = self._index.get(node_id)
        return i is not None and bool(self._isolated[i])

    @property
    def isolated(self) -> frozenset[str]:
        if self._isolated_names is None:
            names = self._names
            self._isolated_names = frozenset(names[i] for i in np.flatnonzero(self._isolated).tolist())  # type: ignore[misc]
        return self._isolated_names

    # -- routing ---------------------------------------------------------------------------

    def routing_tree(self, avoid: Mapping[str, str] | None = None) -> RoutingTree:
        """One breadth-first tree from the origin, not entering vertices in ``avoid``.

        :param avoid: vertex -> reason (``offline``...) for vertices that must not relay.
            Such a vertex is not given a route either: an action for it is undeliverable.
        """
        avoided = dict(avoid or {})
        arrays = self.arrays()
        blocked = arrays.mask(avoided)
        blocked |= self._isolated[:len(arrays.names)]
        blocked[0] = False
        for vertex in self.isolated:
            avoided.setdefault(vertex, "isolated")
        return RoutingTree(parent=ArrayParents(arrays, arrays.search(blocked)), avoided=avoided)

    def partitions(self, tree: RoutingTree | None = None) -> list[list[str]]:
        """Groups of vertices that are neither avoided nor isolated yet have no path from
        the origin (largest first), computed from a routing tree (made here if not given)."""
        tree = tree if tree is not None else self.routing_tree()
        arrays = self.arrays()
        parent = tree.parent
        if isinstance(parent, ArrayParents) and parent._arrays is arrays:  # noqa: SLF001 - same module
            left = parent._pred < 0  # noqa: SLF001
        else:
            left = ~arrays.mask(parent)
        left &= arrays.alive & ~arrays.mask(tree.avoided) & ~self._isolated[:len(arrays.names)]
        left[0] = False
        if not left.any():
            return []
        groups = arrays.components(left)
        groups.sort(key=lambda g: (-len(g), g[0]))
        return groups

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": sorted(self._index),
            "edges": sorted(sorted(e) for e in self.edges()),
            "isolated": sorted(self.isolated),
        }


def build_topology(node_ids: Sequence[str], settings: Mapping[str, Any]) -> Mesh:
    """Build the mesh for ``node_ids`` from the ``mesh`` section of the config.

    Generated topologies link the orchestrator to ``origin_links`` nodes spread evenly
    over the node list (the hub, for ``star``). ``explicit`` uses ``edges`` as given.
    The shapes are drawn as arrays (``wyneos_core.mesh_topology``).
    """
    topology = settings["topology"]
    if topology == "explicit":
        mesh = Mesh()
        mesh.add_nodes(node_ids)
        mesh.add_edges((a, b) for a, b in settings.get("edges", []))
        return mesh
    if topology not in TOPOLOGIES:
        raise MeshError(f"unknown topology {topology!r} (choose from {', '.join(TOPOLOGIES)})")
    if not node_ids:
        return Mesh()
    try:
        return _generated(node_ids, topology, settings)
    except mesh_topology.TopologyError as exc:
        raise MeshError(str(exc)) from exc


def _generated(node_ids: Sequence[str], topology: str, settings: Mapping[str, Any]) -> Mesh:
    n = len(node_ids)
    seed = settings.get("seed", 0)
    degree = settings.get("degree", 4)
    if topology == "star":
        a, b = np.zeros(0, np.int32), np.zeros(0, np.int32)
        hubs = np.arange(n, dtype=np.int32)
    else:
        if topology == "ring":
            a, b = mesh_topology.ring(n)
        elif topology == "full":
            a, b = mesh_topology.full(n)
        elif topology == "random_regular":
            d = min(degree, n - 1)
            if (d * n) % 2:
                d -= 1
            a, b = mesh_topology.random_regular(d, n, seed)
        else:
            k = min(degree, n - 1)
            a, b = (mesh_topology.small_world(n, k, settings.get("rewire", 0.1), seed)
                    if k >= 2 and n > 2 else mesh_topology.path(n))
        links = min(settings.get("origin_links", 3), n)
        step = n / links
        hubs = np.array([int(i * step) for i in range(links)], np.int32)
    # vertex numbers: 0 is the orchestrator, node i is i + 1
    a = np.concatenate([a + 1, np.zeros(len(hubs), np.int32)])
    b = np.concatenate([b + 1, hubs + 1])
    return Mesh.from_arrays(node_ids, a, b)
