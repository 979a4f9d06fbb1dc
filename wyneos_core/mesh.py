"""The mesh: a networkx graph of the nodes plus the orchestrator as origin.

Routing is one breadth-first tree per tick from the origin over healthy vertices (not a
search per action), so propagation costs O(nodes + edges) per tick. Isolating a node
cuts its edges (kept aside so reinstating restores them); vertices that are offline are
routed around for the tick without changing the graph.

The searches run over a compressed sparse row copy of the adjacency (``MeshArrays``,
scipy's ``csgraph``), made again only when the mesh's shape changes: the graph with
every isolated vertex's cut edges put back, so isolating and reinstating (every tick in
a failing cluster) never rebuild it; an isolated vertex is simply not entered. A tree's
parents are read from the predecessor array (``ArrayParents``), never copied into a
dict of a million entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components

from wyneos_core.model import ORIGIN

__all__ = ["ArrayParents", "Mesh", "MeshArrays", "MeshError", "RoutingTree", "build_topology", "TOPOLOGIES"]

TOPOLOGIES = ("explicit", "ring", "star", "random_regular", "small_world", "full")


class MeshError(ValueError):
    """A mesh that cannot be built or an operation on a vertex it does not have."""


class _Graph(nx.Graph):
    """A networkx graph that counts the changes of its shape (``version``), so the
    arrays made from it are made again after any change, also one made straight on the
    graph (``mesh.graph.remove_edge`` by a simulation or a test)."""

    version = 0

    def _changed(self) -> None:
        self.version += 1


for _name in ("add_node", "add_nodes_from", "remove_node", "remove_nodes_from", "add_edge", "add_edges_from",
              "add_weighted_edges_from", "remove_edge", "remove_edges_from", "update", "clear", "clear_edges"):
    def _counting(self: _Graph, *args: Any, __name: str = _name, **kw: Any) -> Any:
        self.version += 1
        return getattr(nx.Graph, __name)(self, *args, **kw)

    _counting.__name__ = _name
    setattr(_Graph, _name, _counting)


class MeshArrays:
    """The mesh's adjacency as arrays: vertex names by index, a name-to-index map and a
    CSR adjacency (``indptr``, ``indices``) of the graph with the isolated vertices' cut
    edges put back (see the module docstring)."""

    __slots__ = ("names", "index", "indptr", "indices", "rows", "key")

    def __init__(self, mesh: Mesh, key: tuple[int, int, int]) -> None:
        adj = mesh.graph._adj  # noqa: SLF001 - read only
        names = list(adj)
        index = {name: i for i, name in enumerate(names)}
        extra: dict[str, list[str]] = {}
        for v, neighbours in mesh._cut.items():  # noqa: SLF001 - the mesh's own state
            for w in neighbours:
                if w in index:
                    extra.setdefault(v, []).append(w)
                    extra.setdefault(w, []).append(v)
        get = index.__getitem__
        counts = np.fromiter((len(adj[v]) + len(extra.get(v, ())) for v in names), np.int64, len(names))
        indptr = np.zeros(len(names) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        flat = [w for v in names for w in (*adj[v], *extra.get(v, ()))] if extra else \
            [w for v in names for w in adj[v]]
        self.names = names
        self.index = index
        self.indptr = indptr
        self.indices = np.fromiter(map(get, flat), np.int32, len(flat))
        self.rows = np.repeat(np.arange(len(names), dtype=np.int32), counts)
        self.key = key

    def mask(self, vertices: Iterable[str]) -> np.ndarray:
        """A boolean mask over the vertices with ``vertices`` (those in the mesh) set."""
        out = np.zeros(len(self.names), bool)
        get = self.index.get
        picked = [i for i in map(get, vertices) if i is not None]
        out[picked] = True
        return out

    def search(self, blocked: np.ndarray | None) -> np.ndarray:
        """Predecessors of a breadth-first search from the origin not entering ``blocked``
        vertices (negative: not reached; the origin has none)."""
        n = len(self.names)
        indices, rows = self.indices, self.rows
        if blocked is not None and blocked.any():
            keep = ~(blocked[rows] | blocked[indices])
            indices, rows = indices[keep], rows[keep]
            indptr = np.zeros(n + 1, np.int64)
            np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        else:
            indptr = self.indptr
        graph = csr_matrix((np.ones(len(indices), np.int8), indices, indptr), shape=(n, n))
        _, pred = breadth_first_order(graph, self.index[ORIGIN], directed=True, return_predecessors=True)
        return pred

    def components(self, within: np.ndarray) -> list[list[str]]:
        """The connected groups of the ``within`` vertices (edges among them only)."""
        keep = within[self.rows] & within[self.indices]
        n = len(self.names)
        graph = csr_matrix((np.ones(int(keep.sum()), np.int8), (self.rows[keep], self.indices[keep])), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        picked = np.flatnonzero(within)
        groups: dict[int, list[str]] = {}
        names = self.names
        for i, label in zip(picked.tolist(), labels[picked].tolist()):
            groups.setdefault(label, []).append(names[i])
        return [sorted(g) for g in groups.values()]


class ArrayParents(Mapping[str, str]):
    """Read-only ``{vertex: parent}`` of a search, backed by its predecessor array."""

    __slots__ = ("_arrays", "_pred")

    def __init__(self, arrays: MeshArrays, pred: np.ndarray) -> None:
        self._arrays = arrays
        self._pred = pred

    def __getitem__(self, vertex: str) -> str:
        i = self._arrays.index.get(vertex)
        if i is None or self._pred[i] < 0:
            raise KeyError(vertex)
        return self._arrays.names[self._pred[i]]

    def get(self, vertex: str, default: Any = None) -> Any:
        i = self._arrays.index.get(vertex)
        if i is None:
            return default
        p = self._pred[i]
        return default if p < 0 else self._arrays.names[p]

    def __contains__(self, vertex: object) -> bool:
        i = self._arrays.index.get(vertex)  # type: ignore[call-overload]
        return i is not None and self._pred[i] >= 0

    def unreached(self) -> list[str]:
        """The vertices without a parent, the origin left out."""
        names = self._arrays.names
        return [names[i] for i in np.flatnonzero(self._pred < 0).tolist() if names[i] != ORIGIN]

    def children(self, vertex: str) -> list[str]:
        """The vertices whose parent is ``vertex`` (one pass over the array)."""
        i = self._arrays.index.get(vertex)
        if i is None:
            return []
        names = self._arrays.names
        return [names[j] for j in np.flatnonzero(self._pred == i).tolist()]

    def reached(self) -> np.ndarray:
        """Indexes (into ``MeshArrays.names``) of the vertices that have a parent."""
        return np.flatnonzero(self._pred >= 0)

    def __iter__(self) -> Iterator[str]:
        names = self._arrays.names
        return (names[i] for i in self.reached().tolist())

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
        if node_id not in self.parent:
            return []
        hops = [node_id]
        parent = self.parent
        while hops[-1] != ORIGIN:
            hops.append(parent[hops[-1]])
        hops.reverse()
        return hops

    def depth(self, node_id: str) -> int:
        return len(self.path(node_id)) - 1


class Mesh:
    """The cluster's communication graph.

    >>> m = Mesh()
    >>> m.add_edges([("orchestrator", "a"), ("a", "b")])
    >>> m.routing_tree().path("b")
    ['orchestrator', 'a', 'b']
    """

    __slots__ = ("graph", "_cut", "_version", "_arrays")

    def __init__(self, graph: nx.Graph | None = None) -> None:
        self.graph: nx.Graph = _Graph(graph) if graph is not None else _Graph()
        self.graph.add_node(ORIGIN)
        self._cut: dict[str, list[str]] = {}  # isolated vertex -> neighbours it had
        #: bumped by the mesh's own changes of shape that keep the graph's (cut edges);
        #: isolating and reinstating are not changes of shape (see the module docstring)
        self._version = 0
        self._arrays: MeshArrays | None = None

    def arrays(self) -> MeshArrays:
        """The adjacency as arrays, made again only after the mesh's shape changed."""
        key = (self._version, getattr(self.graph, "version", -1), self.graph.number_of_nodes())
        arrays = self._arrays
        if arrays is None or arrays.key != key:
            arrays = self._arrays = MeshArrays(self, key)
        return arrays

    # -- shape ---------------------------------------------------------------------------

    def add_node(self, node_id: str) -> None:
        self._version += 1
        self.graph.add_node(node_id)

    def remove_node(self, node_id: str) -> None:
        if node_id == ORIGIN:
            raise MeshError("the orchestrator cannot be removed from the mesh")
        self._version += 1
        if node_id in self.graph:
            self.graph.remove_node(node_id)
        self._cut.pop(node_id, None)
        for neighbours in self._cut.values():
            if node_id in neighbours:
                neighbours.remove(node_id)

    def add_edges(self, edges: Iterable[tuple[str, str]]) -> None:
        self._version += 1
        for a, b in edges:
            if a == b:
                raise MeshError(f"edge from {a!r} to itself")
            self.graph.add_edge(a, b)

    def neighbours(self, node_id: str) -> list[str]:
        self._require(node_id)
        return list(self.graph.adj[node_id])

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.graph

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    # -- isolation -----------------------------------------------------------------------

    def isolate(self, node_id: str) -> list[str]:
        """Cut every edge of ``node_id``; return the neighbours it was cut from."""
        self._require(node_id)
        if node_id == ORIGIN:
            raise MeshError("the orchestrator cannot be isolated")
        if node_id in self._cut:
            return []
        neighbours = list(self.graph.adj[node_id])
        nx.Graph.remove_edges_from(self.graph, ((node_id, n) for n in neighbours))  # not a change of shape
        self._cut[node_id] = neighbours
        return neighbours

    def reinstate(self, node_id: str) -> list[str]:
        """Restore the edges cut by ``isolate`` (to neighbours still in the mesh)."""
        neighbours = self._cut.pop(node_id, None)
        if neighbours is None:
            return []
        restored = [n for n in neighbours if n in self.graph and n not in self._cut]
        nx.Graph.add_edges_from(self.graph, ((node_id, n) for n in restored))  # not a change of shape
        # an edge to another isolated vertex comes back when that one is reinstated
        for n in neighbours:
            if n in self._cut and node_id not in self._cut[n]:
                self._cut[n].append(node_id)
        return restored

    @property
    def kept_edges(self) -> Mapping[str, tuple[str, ...]]:
        """Isolated vertex -> the neighbours its isolation cut it from (read only)."""
        return MappingProxyType({v: tuple(ns) for v, ns in self._cut.items()})

    def reachable_if_reinstated(self) -> set[str]:
        """Vertices that would have a path to the origin if every isolation were undone
        (the cut edges counted in both directions), origin included."""
        arrays = self.arrays()
        pred = arrays.search(None)
        names = arrays.names
        reached = {names[i] for i in np.flatnonzero(pred >= 0).tolist()}
        reached.add(ORIGIN)
        return reached

    def is_isolated(self, node_id: str) -> bool:
        return node_id in self._cut

    @property
    def isolated(self) -> frozenset[str]:
        return frozenset(self._cut)

    # -- routing -------------------------------------------------------------------------

    def routing_tree(self, avoid: Mapping[str, str] | None = None) -> RoutingTree:
        """One breadth-first tree from the origin, not entering vertices in ``avoid``.

        :param avoid: vertex -> reason (``offline``...) for vertices that must not relay.
            Such a vertex is not given a route either: an action for it is undeliverable.
        """
        avoided = dict(avoid or {})
        arrays = self.arrays()
        blocked = arrays.mask([*avoided, *self._cut])
        blocked[arrays.index[ORIGIN]] = False
        for vertex in self._cut:
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
        left &= ~arrays.mask(tree.avoided)
        left[arrays.index[ORIGIN]] = False
        if not left.any():
            return []
        groups = arrays.components(left)
        groups.sort(key=lambda g: (-len(g), g[0]))
        return groups

    def cut_edge(self, a: str, b: str) -> None:
        """Remove one edge (a network fault), also from an isolated node's kept edges,
        so reinstating it cannot bring back a link the network no longer has."""
        self._version += 1
        if self.graph.has_edge(a, b):
            self.graph.remove_edge(a, b)
            return
        for x, y in ((a, b), (b, a)):
            kept = self._cut.get(x)
            if kept is not None and y in kept:
                kept.remove(y)

    def restore_edge(self, a: str, b: str) -> None:
        """Bring one edge back (a fault healed); for an isolated end it waits for reinstate."""
        if a not in self.graph or b not in self.graph:
            return
        self._version += 1
        for x, y in ((a, b), (b, a)):
            if x in self._cut:
                if y not in self._cut[x]:
                    self._cut[x].append(y)
                return
        self.graph.add_edge(a, b)

    def _require(self, node_id: str) -> None:
        if node_id not in self.graph:
            raise MeshError(f"{node_id!r} is not in the mesh")

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": sorted(self.graph.nodes),
            "edges": sorted(sorted(e) for e in self.graph.edges),
            "isolated": sorted(self._cut),
        }


def build_topology(node_ids: Sequence[str], settings: Mapping[str, Any]) -> Mesh:
    """Build the mesh for ``node_ids`` from the ``mesh`` section of the config.

    Generated topologies link the orchestrator to ``origin_links`` nodes spread evenly
    over the node list (the hub, for ``star``). ``explicit`` uses ``edges`` as given.
    """
    topology = settings["topology"]
    n = len(node_ids)
    seed = settings.get("seed", 0)
    degree = settings.get("degree", 4)
    mesh = Mesh()
    mesh.graph.add_nodes_from(node_ids)
    if topology == "explicit":
        mesh.add_edges((a, b) for a, b in settings.get("edges", []))
        return mesh
    if n == 0:
        return mesh
    if topology == "star":
        mesh.add_edges((ORIGIN, v) for v in node_ids)
        return mesh
    if topology == "ring":
        base = nx.cycle_graph(n) if n > 2 else nx.path_graph(n)
    elif topology == "full":
        base = nx.complete_graph(n)
    elif topology == "random_regular":
        d = min(degree, n - 1)
        if (d * n) % 2:
            d -= 1
        base = nx.random_regular_graph(d, n, seed=seed) if d > 0 else nx.empty_graph(n)
    elif topology == "small_world":
        k = min(degree, n - 1)
        base = (
            nx.connected_watts_strogatz_graph(n, k, settings.get("rewire", 0.1), seed=seed)
            if k >= 2 and n > 2
            else nx.path_graph(n)
        )
    else:
        raise MeshError(f"unknown topology {topology!r} (choose from {', '.join(TOPOLOGIES)})")
    mesh.graph.add_edges_from((node_ids[a], node_ids[b]) for a, b in base.edges)
    links = min(settings.get("origin_links", 3), n)
    step = n / links
    mesh.add_edges((ORIGIN, node_ids[int(i * step)]) for i in range(links))
    return mesh
