"""The mesh: a networkx graph of the nodes plus the orchestrator as origin.

Routing is one breadth-first tree per tick from the origin over healthy vertices (not a
search per action), so propagation costs O(nodes + edges) per tick. Isolating a node
cuts its edges (kept aside so reinstating restores them); vertices that are offline are
routed around for the tick without changing the graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx

from wyneos_core.model import ORIGIN

__all__ = ["Mesh", "MeshError", "RoutingTree", "build_topology", "TOPOLOGIES"]

TOPOLOGIES = ("explicit", "ring", "star", "random_regular", "small_world", "full")


class MeshError(ValueError):
    """A mesh that cannot be built or an operation on a vertex it does not have."""


@dataclass(slots=True)
class RoutingTree:
    """Parents of every vertex reachable from the origin over healthy vertices."""

    parent: dict[str, str]
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

    __slots__ = ("graph", "_cut")

    def __init__(self, graph: nx.Graph | None = None) -> None:
        self.graph: nx.Graph = graph if graph is not None else nx.Graph()
        self.graph.add_node(ORIGIN)
        self._cut: dict[str, list[str]] = {}  # isolated vertex -> neighbours it had

    # -- shape ---------------------------------------------------------------------------

    def add_node(self, node_id: str) -> None:
        self.graph.add_node(node_id)

    def remove_node(self, node_id: str) -> None:
        if node_id == ORIGIN:
            raise MeshError("the orchestrator cannot be removed from the mesh")
        if node_id in self.graph:
            self.graph.remove_node(node_id)
        self._cut.pop(node_id, None)
        for neighbours in self._cut.values():
            if node_id in neighbours:
                neighbours.remove(node_id)

    def add_edges(self, edges: Iterable[tuple[str, str]]) -> None:
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
        self.graph.remove_edges_from((node_id, n) for n in neighbours)
        self._cut[node_id] = neighbours
        return neighbours

    def reinstate(self, node_id: str) -> list[str]:
        """Restore the edges cut by ``isolate`` (to neighbours still in the mesh)."""
        neighbours = self._cut.pop(node_id, None)
        if neighbours is None:
            return []
        restored = [n for n in neighbours if n in self.graph and n not in self._cut]
        self.graph.add_edges_from((node_id, n) for n in restored)
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
        extra: dict[str, list[str]] = {}
        for v, neighbours in self._cut.items():
            for w in neighbours:
                extra.setdefault(v, []).append(w)
                extra.setdefault(w, []).append(v)
        reached = self._bfs(ORIGIN, extra=extra)
        reached[ORIGIN] = ORIGIN
        return set(reached)

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
        parent = self._bfs(ORIGIN, blocked=avoided.keys())
        for vertex in self._cut:
            avoided.setdefault(vertex, "isolated")
        return RoutingTree(parent=parent, avoided=avoided)

    def partitions(self, tree: RoutingTree | None = None) -> list[list[str]]:
        """Groups of vertices that are neither avoided nor isolated yet have no path from
        the origin (largest first), computed from a routing tree (made here if not given)."""
        tree = tree if tree is not None else self.routing_tree()
        parent, avoided = tree.parent, tree.avoided
        left = {v for v in self.graph if v != ORIGIN and v not in parent and v not in avoided}
        groups = []
        while left:
            start = left.pop()
            members = self._bfs(start, within=left)  # takes what it reaches out of ``left``
            groups.append(sorted([start, *members]))
        groups.sort(key=lambda g: (-len(g), g[0]))
        return groups

    def _bfs(self, source: str, *, blocked: Iterable[str] = (), within: set[str] | None = None,
             extra: Mapping[str, Iterable[str]] | None = None) -> dict[str, str]:
        """Parents of the vertices reached breadth-first from ``source``.

        Vertices in ``blocked`` are not entered. With ``within``, only vertices of that
        set are entered, and each one reached is removed from it (so repeated searches
        over what is left cost O(edges) in all). ``extra`` adds adjacency the graph does
        not have (cut edges, for "what if reinstated").

        Walks networkx's own adjacency storage (``Graph._adj``, a dict of dicts) level by
        level: on a 100k-node mesh this is about 3.5x faster than ``nx.bfs_predecessors``
        (whose views and generators dominate; measured in bench/bench_tick.py), and the
        tick needs it several times. The graph itself is never written here.
        """
        adj = self.graph._adj  # noqa: SLF001 - read only, see the docstring
        if extra:
            adj = {v: [*adj[v], *extra.get(v, ())] for v in adj}
        parent: dict[str, str] = {}
        frontier = [source]
        if within is None:
            seen = set(blocked)  # one membership test per edge: blocked vertices count as seen
            seen.add(source)
            while frontier:
                nxt = []
                for v in frontier:
                    for w in adj[v]:
                        if w not in seen:
                            seen.add(w)
                            parent[w] = v
                            nxt.append(w)
                frontier = nxt
            return parent
        todo = within
        todo.discard(source)
        while frontier:
            nxt = []
            for v in frontier:
                for w in adj[v]:
                    if w in todo:
                        todo.discard(w)
                        parent[w] = v
                        nxt.append(w)
            frontier = nxt
        return parent

    def cut_edge(self, a: str, b: str) -> None:
        """Remove one edge (a network fault), also from an isolated node's kept edges,
        so reinstating it cannot bring back a link the network no longer has."""
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
