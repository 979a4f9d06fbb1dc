"""``MeshGraph``: the mesh seen, and changed, as a ``networkx.Graph``.

networkx is the graph API users and plugins know (and the project documents): every
read, view and algorithm of networkx runs on ``mesh.graph``. The store is the mesh's
arrays (``wyneos_core.mesh``): a networkx graph of a million vertices costs about 450
bytes each in dicts, the arrays about 110 (docs/performance.md). So ``MeshGraph`` is a
networkx ``Graph`` whose node and adjacency dicts are live read-only views of the mesh
(made per vertex when asked, never for the whole mesh at once), and whose changing
methods write through to the mesh:

==========================================  ===========================================
networkx call                               what the mesh does
==========================================  ===========================================
``add_node(v)``, ``add_nodes_from``         ``Mesh.add_node``
``remove_node(v)``, ``remove_nodes_from``   ``Mesh.remove_node`` (its edges go too)
``add_edge(u, v)``, ``add_edges_from``      ``Mesh.add_edges`` (new vertices included)
``remove_edge(u, v)``, ``remove_edges_from``  ``Mesh.cut_edge`` (a link failure)
``update``, ``clear_edges``, ``clear``      the same, edge by edge (the orchestrator stays)
==========================================  ===========================================

The graph shows the edges that count: an isolated vertex has none while it is isolated
(its edges are kept by the mesh and come back with ``Mesh.reinstate``), and an edge
added to an isolated vertex shows once it is reinstated. The mesh keeps no node or edge
attributes: their dicts read as empty and refuse writes, and a change that carries
attributes (``add_edge(u, v, weight=2)``) is refused with ``networkx.NetworkXError``
before it changes anything. ``copy()`` gives a plain, detached ``networkx.Graph``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import networkx as nx

from wyneos_core.model import ORIGIN

if TYPE_CHECKING:
    from wyneos_core.mesh import Mesh

__all__ = ["MeshGraph"]

#: the (empty, read-only) attribute dict of every vertex and edge
NO_ATTRIBUTES: Mapping[str, Any] = MappingProxyType({})


class _Neighbours(Mapping[str, Mapping[str, Any]]):
    """``graph._adj[v]``: v's live neighbours, each with its (empty) edge attributes."""

    __slots__ = ("_names", "_set")

    def __init__(self, names: list[str]) -> None:
        self._names = names
        self._set: set[str] | None = None

    def __contains__(self, w: object) -> bool:
        if self._set is None:
            self._set = set(self._names)
        return w in self._set

    def __getitem__(self, w: str) -> Mapping[str, Any]:
        if w in self:
            return NO_ATTRIBUTES
        raise KeyError(w)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _Vertices(Mapping[str, Mapping[str, Any]]):
    """``graph._node``: every vertex of the mesh with its (empty) attributes."""

    __slots__ = ("_mesh",)

    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh

    def __contains__(self, v: object) -> bool:
        try:
            return v in self._mesh
        except TypeError:  # unhashable: networkx asks `n in G` of anything
            return False

    def __getitem__(self, v: str) -> Mapping[str, Any]:
        if v in self:
            return NO_ATTRIBUTES
        raise KeyError(v)

    def __iter__(self) -> Iterator[str]:
        return iter(self._mesh.vertices())

    def __len__(self) -> int:
        return len(self._mesh)


class _Adjacency(_Vertices):
    """``graph._adj``: each vertex's live neighbours, made when asked."""

    __slots__ = ()

    def __getitem__(self, v: str) -> _Neighbours:  # type: ignore[override]
        if v in self:
            return _Neighbours(self._mesh.neighbours(v))
        raise KeyError(v)


def _refuse_attributes(attr: Mapping[str, Any], what: str) -> None:
    if attr:
        raise nx.NetworkXError(f"the mesh keeps no {what} attributes (got {', '.join(sorted(map(str, attr)))})")


class MeshGraph(nx.Graph):
    """A live ``networkx.Graph`` view of a ``Mesh``, changes written through.

    Made with no mesh (as networkx makes empty graphs of a graph's class for subgraph
    views), it is an ordinary ``networkx.Graph``.
    """

    def __init__(self, incoming_graph_data: Any = None, *, mesh: Mesh | None = None, **attr: Any) -> None:
        self._mesh = mesh
        if mesh is None:
            super().__init__(incoming_graph_data, **attr)
            return
        self.graph = mesh.attributes
        self._node = _Vertices(mesh)
        self._adj = _Adjacency(mesh)
        self.__networkx_cache__ = None  # the mesh changes underneath: nothing may be cached

    # -- reads the mesh answers faster than the views ------------------------------------------

    def has_edge(self, u: Any, v: Any) -> bool:
        if self._mesh is None:
            return super().has_edge(u, v)
        try:
            return self._mesh.has_edge(u, v)
        except TypeError:
            return False

    def number_of_edges(self, u: Any = None, v: Any = None) -> int:
        if self._mesh is None or u is not None:
            return super().number_of_edges(u, v)
        return self._mesh.number_of_edges()

    def copy(self, as_view: bool = False) -> nx.Graph:
        """A plain, detached ``networkx.Graph`` with the same vertices and live edges."""
        if self._mesh is None or as_view:
            return super().copy(as_view)
        out = nx.Graph()
        out.graph.update(self.graph)
        out.add_nodes_from(self._mesh.vertices())
        out.add_edges_from(self._mesh.edges())
        return out

    # -- changes, written through ------------------------------------------------------------

    def add_node(self, node_for_adding: Any, **attr: Any) -> None:
        if self._mesh is None:
            return super().add_node(node_for_adding, **attr)
        _refuse_attributes(attr, "node")
        self._mesh.add_node(node_for_adding)
        return None

    def add_nodes_from(self, nodes_for_adding: Iterable[Any], **attr: Any) -> None:
        if self._mesh is None:
            return super().add_nodes_from(nodes_for_adding, **attr)
        _refuse_attributes(attr, "node")
        names = []
        for n in nodes_for_adding:
            if isinstance(n, tuple) and len(n) == 2 and isinstance(n[1], Mapping):
                _refuse_attributes(n[1], "node")
                n = n[0]
            names.append(n)
        self._mesh.add_nodes(names)
        return None

    def remove_node(self, n: Any) -> None:
        if self._mesh is None:
            return super().remove_node(n)
        if n not in self._node:
            raise nx.NetworkXError(f"The node {n} is not in the graph.")
        self._mesh.remove_node(n)
        return None

    def remove_nodes_from(self, nodes: Iterable[Any]) -> None:
        if self._mesh is None:
            return super().remove_nodes_from(nodes)
        for n in list(nodes):
            if n in self._node:
                self._mesh.remove_node(n)
        return None

    def add_edge(self, u_of_edge: Any, v_of_edge: Any, **attr: Any) -> None:
        if self._mesh is None:
            return super().add_edge(u_of_edge, v_of_edge, **attr)
        _refuse_attributes(attr, "edge")
        self._mesh.add_edges([(u_of_edge, v_of_edge)])
        return None

    def add_edges_from(self, ebunch_to_add: Iterable[Any], **attr: Any) -> None:
        if self._mesh is None:
            return super().add_edges_from(ebunch_to_add, **attr)
        _refuse_attributes(attr, "edge")
        pairs = []
        for e in ebunch_to_add:
            if len(e) == 3:
                _refuse_attributes(e[2], "edge")
            elif len(e) != 2:
                raise nx.NetworkXError(f"Edge tuple {e} must be a 2-tuple or 3-tuple.")
            pairs.append((e[0], e[1]))
        self._mesh.add_edges(pairs)
        return None

    def add_weighted_edges_from(self, ebunch_to_add: Iterable[Any], weight: str = "weight", **attr: Any) -> None:
        if self._mesh is None:
            return super().add_weighted_edges_from(ebunch_to_add, weight, **attr)
        raise nx.NetworkXError(f"the mesh keeps no edge attributes (got {weight!r})")

    def remove_edge(self, u: Any, v: Any) -> None:
        if self._mesh is None:
            return super().remove_edge(u, v)
        if not self.has_edge(u, v):
            raise nx.NetworkXError(f"The edge {u}-{v} is not in the graph")
        self._mesh.cut_edge(u, v)
        return None

    def remove_edges_from(self, ebunch: Iterable[Any]) -> None:
        if self._mesh is None:
            return super().remove_edges_from(ebunch)
        for e in list(ebunch):
            if self.has_edge(e[0], e[1]):
                self._mesh.cut_edge(e[0], e[1])
        return None

    def clear_edges(self) -> None:
        if self._mesh is None:
            return super().clear_edges()
        for u, v in self._mesh.edges():
            self._mesh.cut_edge(u, v)
        return None

    def clear(self) -> None:
        """Every vertex but the orchestrator removed, graph attributes emptied."""
        if self._mesh is None:
            return super().clear()
        self.remove_nodes_from([v for v in self._mesh.vertices() if v != ORIGIN])
        self.graph.clear()
        return None
