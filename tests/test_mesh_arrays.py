"""The mesh kept as arrays, checked against networkx itself.

A reference model runs beside the mesh: a plain ``networkx.Graph`` of the physical
links plus a set of isolated vertices. Routing trees, partitions, isolation results
and the graph shown by ``mesh.graph`` must be what networkx computes on it, on seeded
random graphs, through isolations, reinstatements, link failures, nodes leaving and
joining, and changes made through the networkx API.
"""

from __future__ import annotations

import random

import networkx as nx
import numpy as np
import pytest

from wyneos_core import mesh_topology
from wyneos_core.config import Config
from wyneos_core.mesh import Mesh, MeshError, build_topology
from wyneos_core.model import ORIGIN


def settings(**kw):
    s = dict(Config.defaults()["mesh"])
    s.update(kw)
    return s


def networkx_build(ids, s) -> nx.Graph:
    """The mesh as the networkx implementation built it, edge for edge and in order."""
    graph = nx.Graph()
    graph.add_node(ORIGIN)
    graph.add_nodes_from(ids)
    n = len(ids)
    if s["topology"] == "explicit":
        graph.add_edges_from(map(tuple, s["edges"]))
        return graph
    if s["topology"] == "ring":
        base = nx.cycle_graph(n) if n > 2 else nx.path_graph(n)
    elif s["topology"] == "random_regular":
        d = min(s["degree"], n - 1)
        d -= (d * n) % 2
        base = nx.random_regular_graph(d, n, seed=s["seed"])
    else:
        base = nx.connected_watts_strogatz_graph(n, min(s["degree"], n - 1), s["rewire"], seed=s["seed"])
    graph.add_edges_from((ids[a], ids[b]) for a, b in base.edges)
    links = min(s["origin_links"], n)
    graph.add_edges_from((ORIGIN, ids[int(i * n / links)]) for i in range(links))
    return graph


class Reference:
    """The mesh as networkx would keep it: physical links and the isolated set."""

    def __init__(self, graph: nx.Graph) -> None:
        self.physical = graph
        self.isolated: set[str] = set()

    def live(self) -> nx.Graph:
        """The edges that count (neither end isolated), adjacency order kept."""
        iso = self.isolated
        return nx.subgraph_view(self.physical, filter_edge=lambda a, b: a not in iso and b not in iso)

    def tree(self, avoid) -> dict[str, str]:
        """networkx's own breadth-first tree over the live graph."""
        blocked = (set(avoid) | self.isolated) - {ORIGIN}
        graph = nx.subgraph_view(self.live(), filter_node=lambda v: v not in blocked)
        return dict(nx.bfs_predecessors(graph, ORIGIN))

    def partitions(self, reached, avoid) -> set[frozenset[str]]:
        left = [v for v in self.physical if v != ORIGIN and v not in reached and v not in avoid
                and v not in self.isolated]
        return {frozenset(c) for c in nx.connected_components(self.live().subgraph(left))}


def check(mesh: Mesh, ref: Reference, rng: random.Random, exact: bool) -> None:
    ids = [v for v in ref.physical if v != ORIGIN]
    avoid = {v: "offline" for v in rng.sample(ids, min(len(ids), rng.randint(0, 12)))}
    tree = mesh.routing_tree(avoid)
    expected = ref.tree(avoid)
    assert set(tree.parent) == set(expected)
    if exact:  # neighbours in the same order as networkx's: the very same breadth-first tree
        assert dict(tree.parent.items()) == expected
    else:  # a parent is a live neighbour one level up
        depth = nx.single_source_shortest_path_length(
            nx.subgraph_view(ref.live(), filter_node=lambda v: v == ORIGIN or (v not in avoid and v not in ref.isolated)),
            ORIGIN)
        for v, p in tree.parent.items():
            assert ref.live().has_edge(v, p) and depth[p] == depth[v] - 1
    assert {frozenset(g) for g in mesh.partitions(tree)} == ref.partitions(set(expected), avoid)
    assert mesh.isolated == frozenset(ref.isolated)
    graph = mesh.graph
    assert set(graph.nodes) == set(ref.physical.nodes) and len(graph) == len(ref.physical)
    assert {frozenset(e) for e in graph.edges} == {frozenset(e) for e in ref.live().edges}
    assert graph.number_of_edges() == ref.live().number_of_edges()
    for v in rng.sample(ids, min(len(ids), 20)):
        assert mesh.neighbours(v) == list(ref.live().adj[v]) or not exact
        assert sorted(mesh.neighbours(v)) == sorted(ref.live().adj[v])
    assert mesh.reachable_if_reinstated() == set(nx.node_connected_component(ref.physical, ORIGIN))
    order = rng.sample(ids, len(ids) // 2) + [ORIGIN]  # some vertices left out
    indptr, indices = mesh.adjacency(order)
    for p, v in enumerate(order):
        assert [order[j] for j in indices[indptr[p]:indptr[p + 1]]] == [w for w in mesh.neighbours(v) if w in order]


@pytest.mark.parametrize("topology", ["small_world", "random_regular", "ring", "explicit"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_trees_partitions_and_isolation_equal_networkx_on_random_graphs(topology, seed):
    rng = random.Random(seed)
    ids = [f"n{i}" for i in range(rng.randint(30, 200))]
    if topology == "explicit":  # a sparse random graph: partitions happen
        edges = [[a, b] for a, b in {tuple(sorted(rng.sample(ids, 2))) for _ in range(len(ids))}]
        edges += [[ORIGIN, v] for v in rng.sample(ids, 3)]
        s = settings(topology="explicit", edges=edges)
    else:
        s = settings(topology=topology, seed=seed, degree=rng.choice([3, 4, 6]))
    mesh = build_topology(ids, s)
    ref = Reference(networkx_build(ids, s))
    check(mesh, ref, rng, exact=True)
    for _ in range(25):  # isolation never reorders anything: the trees stay the very same
        v = rng.choice(ids)
        if v in ref.isolated:
            restored = mesh.reinstate(v)
            ref.isolated.discard(v)
            assert sorted(restored) == sorted(ref.live().adj[v])
        else:
            cut = mesh.isolate(v)
            assert sorted(cut) == sorted(ref.live().adj[v])
            ref.isolated.add(v)
            assert mesh.neighbours(v) == [] and mesh.kept_edges[v] == tuple(ref.physical.adj[v])
        check(mesh, ref, rng, exact=True)


@pytest.mark.parametrize("seed", [4, 5, 6, 7])
def test_equal_to_networkx_through_faults_leaves_joins_and_graph_edits(seed):
    rng = random.Random(seed)
    ids = [f"n{i}" for i in range(150)]
    s = settings(topology="small_world", seed=seed, degree=4, origin_links=2)
    mesh = build_topology(ids, s)
    ref = Reference(networkx_build(ids, s))
    joined = 0
    for step in range(60):
        kind = rng.randrange(7)
        present = [v for v in ref.physical if v != ORIGIN]
        v = rng.choice(present)
        if kind == 0:
            mesh.isolate(v)
            ref.isolated.add(v)
        elif kind == 1 and ref.isolated:
            v = rng.choice(sorted(ref.isolated))
            mesh.reinstate(v)
            ref.isolated.discard(v)
        elif kind == 2:  # a link fails, isolated end or not
            links = list(ref.physical.adj[v])
            if links:
                w = rng.choice(links)
                mesh.cut_edge(v, w)
                ref.physical.remove_edge(v, w)
        elif kind == 3:  # a link heals (or appears)
            w = rng.choice(present + [ORIGIN])
            if w != v:
                mesh.restore_edge(v, w)
                ref.physical.add_edge(v, w)
        elif kind == 4:  # a node leaves
            mesh.remove_node(v)
            ref.physical.remove_node(v)
            ref.isolated.discard(v)
        elif kind == 5:  # a node joins (into a freed number, if any)
            joined += 1
            new = f"j{joined}"
            links = rng.sample(present, 2)
            mesh.add_node(new)
            mesh.add_edges((new, w) for w in links)
            ref.physical.add_edges_from((new, w) for w in links)
        else:  # a link failure written straight on the networkx graph
            live = list(ref.live().adj[v])
            if live:
                w = rng.choice(live)
                mesh.graph.remove_edge(v, w)
                ref.physical.remove_edge(v, w)
        check(mesh, ref, rng, exact=False)


def test_isolate_reinstate_cut_restore_round_trips():
    mesh = build_topology([f"n{i}" for i in range(40)], settings(topology="small_world", seed=9, origin_links=2))
    start = mesh.to_dict()
    neighbours = {v: sorted(mesh.neighbours(v)) for v in mesh.vertices()}
    for v in ("n3", "n4", "n5"):
        mesh.isolate(v)
    assert mesh.isolate("n3") == []  # twice: nothing more to cut
    assert mesh.to_dict()["isolated"] == ["n3", "n4", "n5"]
    assert all(v not in mesh.neighbours(w) for w in mesh.vertices() for v in ("n3", "n4", "n5"))
    for v in ("n5", "n3", "n4"):
        mesh.reinstate(v)
    assert mesh.reinstate("n3") == []  # not isolated: nothing to restore
    assert mesh.to_dict() == start
    assert {v: sorted(mesh.neighbours(v)) for v in mesh.vertices()} == neighbours

    a, b = "n10", mesh.neighbours("n10")[0]
    mesh.cut_edge(a, b)
    assert not mesh.has_edge(a, b) and b not in mesh.neighbours(a) and a not in mesh.neighbours(b)
    mesh.restore_edge(a, b)
    assert mesh.to_dict() == start

    # a link that fails while its node is isolated does not come back with the node
    mesh.isolate(a)
    mesh.cut_edge(a, b)
    assert b not in mesh.kept_edges[a]
    mesh.reinstate(a)
    assert not mesh.has_edge(a, b)
    # a link that heals while its node is isolated waits for the reinstatement
    mesh.isolate(a)
    mesh.restore_edge(a, b)
    assert not mesh.has_edge(a, b) and b in mesh.kept_edges[a]
    mesh.reinstate(a)
    assert mesh.to_dict() == start


def test_a_node_leaves_and_another_joins_into_its_number():
    mesh = build_topology(["a", "b", "c", "d"], settings(topology="ring", origin_links=1))
    old = mesh.routing_tree()
    assert old.path("c") == [ORIGIN, "a", "b", "c"]
    mesh.isolate("c")
    mesh.remove_node("c")
    assert "c" not in mesh and "c" not in mesh.isolated and "c" not in mesh.neighbours("b")
    assert mesh.routing_tree().path("d") == [ORIGIN, "a", "d"]
    assert mesh.partitions() == []
    mesh.add_node("e")  # takes c's number, none of c's edges
    assert mesh.neighbours("e") == [] and not mesh.is_isolated("e")
    assert mesh.partitions() == [["e"]]
    mesh.add_edges([("e", "b")])
    tree = mesh.routing_tree()
    assert tree.path("e") == [ORIGIN, "a", "b", "e"] and "c" not in tree.parent
    # an older tree still answers for the vertices it saw that are still there; "e", in
    # c's old number, is not taken for c, and c, gone, has no route
    assert old.path("d") == [ORIGIN, "a", "d"] and "e" not in old.parent and old.path("c") == []
    mesh.add_node("c")  # back, without its old links
    assert mesh.neighbours("c") == [] and mesh.partitions() == [["c"]]
    with pytest.raises(MeshError):
        mesh.remove_node(ORIGIN)


def test_the_networkx_graph_is_a_live_view_and_writes_through():
    mesh = build_topology([f"n{i}" for i in range(12)], settings(topology="ring", origin_links=2))
    graph = mesh.graph
    assert isinstance(graph, nx.Graph) and graph is mesh.graph
    assert nx.shortest_path(graph, ORIGIN, "n3") == mesh.routing_tree().path("n3")
    assert nx.is_connected(graph) and graph.degree(ORIGIN) == 2

    mesh.isolate("n3")  # a view held across a change sees it
    assert graph.degree("n3") == 0 and not graph.has_edge("n2", "n3")
    mesh.reinstate("n3")

    graph.remove_edge("n2", "n3")
    assert not mesh.has_edge("n2", "n3") and mesh.routing_tree().path("n3") == [ORIGIN, "n6", "n5", "n4", "n3"]
    graph.add_edge("n3", "n0")
    assert mesh.routing_tree().path("n3") == [ORIGIN, "n0", "n3"]
    graph.add_node("x")
    graph.add_edges_from([("x", "n7")])
    assert mesh.neighbours("x") == ["n7"] and mesh.routing_tree().reachable("x")
    graph.remove_node("x")
    assert "x" not in mesh and "x" not in mesh.neighbours("n7")

    before = mesh.to_dict()
    with pytest.raises(nx.NetworkXError, match="not in the graph"):
        graph.remove_edge("n1", "n9")
    with pytest.raises(nx.NetworkXError, match="no edge attributes"):
        graph.add_edge("n1", "n9", weight=2)
    with pytest.raises(nx.NetworkXError, match="no node attributes"):
        graph.add_node("y", zone="eu")
    with pytest.raises(TypeError):
        graph.edges["n0", "n1"]["weight"] = 3  # the attribute dicts are read-only
    assert mesh.to_dict() == before  # refused changes change nothing

    copy = graph.copy()
    assert type(copy) is nx.Graph and set(copy) == set(graph)
    assert sorted(map(sorted, copy.edges)) == sorted(map(sorted, graph.edges))
    copy.remove_edge("n0", "n1")
    assert mesh.has_edge("n0", "n1")  # the copy is detached
    sub = graph.subgraph(["n0", "n1", "n2"])
    assert sorted(map(sorted, sub.edges)) == [["n0", "n1"], ["n1", "n2"]]


def test_topology_draws_are_networkx_up_to_its_limit_and_numpy_above(monkeypatch):
    ids = [f"n{i}" for i in range(300)]
    mesh = build_topology(ids, settings(topology="small_world", seed=4, degree=4, rewire=0.2, origin_links=1))
    theirs = nx.connected_watts_strogatz_graph(300, 4, 0.2, seed=4)
    assert {frozenset(e) for e in mesh.edges()} == \
        {frozenset((ids[a], ids[b])) for a, b in theirs.edges} | {frozenset((ORIGIN, "n0"))}

    monkeypatch.setattr(mesh_topology, "NETWORKX_UP_TO", 0)
    n = 3000
    for k in (4, 6):
        a, b = mesh_topology.small_world(n, k, 0.3, 11)
        keys = {frozenset(e) for e in zip(a.tolist(), b.tolist())}
        assert len(keys) == len(a) == n * k // 2 and all(len(e) == 2 for e in keys)  # simple graph
        assert nx.is_connected(nx.Graph(zip(a.tolist(), b.tolist())))
        assert np.bincount(np.concatenate([a, b]), minlength=n).min() >= k // 2
        again = mesh_topology.small_world(n, k, 0.3, 11)
        assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])
        assert not np.array_equal(b, mesh_topology.small_world(n, k, 0.3, 12)[1])
    a, b = mesh_topology.small_world(n, 4, 0.0, 1)  # no rewiring: the lattice itself
    assert {frozenset(e) for e in zip(a.tolist(), b.tolist())} == \
        {frozenset(e) for e in nx.watts_strogatz_graph(n, 4, 0.0).edges}
    for d in (3, 4, 5):
        a, b = mesh_topology.random_regular(d, n, 2)
        assert len({frozenset(e) for e in zip(a.tolist(), b.tolist())}) == len(a) and (a != b).all()
        assert set(np.bincount(np.concatenate([a, b]), minlength=n).tolist()) == {d}
    big = build_topology([f"v{i}" for i in range(n)], settings(topology="random_regular", degree=4, seed=3))
    assert all(len(big.neighbours(f"v{i}")) == 4 + (f"v{i}" in big.neighbours(ORIGIN)) for i in range(0, n, 97))
    assert len(big.routing_tree().parent) == n


def test_bad_meshes_are_refused_with_a_reason():
    with pytest.raises(MeshError, match="itself"):
        Mesh().add_edges([("a", "a")])
    with pytest.raises(MeshError, match="duplicate"):
        build_topology(["a", "b", "a"], settings(topology="ring"))
    with pytest.raises(MeshError, match="unknown topology"):
        build_topology(["a"], settings(topology="torus"))
    with pytest.raises(MeshError, match="string"):
        Mesh().add_node(7)  # type: ignore[arg-type]


def test_a_reader_thread_sees_consistent_neighbours_while_the_tick_changes_the_mesh():
    """The service reads neighbourhoods beside a running tick: a reader never sees an edge
    twice or one that never existed, whatever moment it reads at."""
    import threading

    ids = [f"n{i}" for i in range(200)]
    mesh = build_topology(ids, settings(topology="ring", origin_links=2))
    ever = {frozenset(e) for e in mesh.edges()}
    extra = [(ids[i], ids[(i + 50) % 200]) for i in range(0, 200, 5)]
    ever |= {frozenset(e) for e in extra}
    stop = threading.Event()
    problems: list[str] = []

    def read() -> None:
        while not stop.is_set():
            for v in ids[::7]:
                seen = mesh.graph.adj[v]
                names = list(seen)
                if len(names) != len(set(names)) or any(frozenset((v, w)) not in ever for w in names):
                    problems.append(f"{v}: {names}")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(60):
            for a, b in extra:
                if round_ % 2:
                    mesh.cut_edge(a, b)
                else:
                    mesh.add_edges([(a, b)])
            mesh.cut_edge(ids[round_], ids[round_ + 1])
            mesh.routing_tree({ids[(3 * round_) % 200]: "offline"})  # folds the changes into new arrays
            mesh.restore_edge(ids[round_], ids[round_ + 1])
    finally:
        stop.set()
        reader.join()
    assert problems == []
