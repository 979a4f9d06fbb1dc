from __future__ import annotations

import random

import networkx as nx
import pytest

from wyneos_core.config import Config
from wyneos_core.mesh import Mesh, MeshError, build_topology
from wyneos_core.model import ORIGIN

IDS = [f"n{i}" for i in range(20)]


def settings(**kw):
    s = dict(Config.defaults()["mesh"])
    s.update(kw)
    return s


@pytest.mark.parametrize("topology", ["ring", "star", "random_regular", "small_world", "full"])
def test_generated_topologies_reach_every_node(topology):
    mesh = build_topology(IDS, settings(topology=topology, seed=3))
    tree = mesh.routing_tree()
    assert all(tree.reachable(i) for i in IDS)
    assert set(mesh.graph.nodes) == set(IDS) | {ORIGIN}
    if topology == "star":
        assert mesh.graph.degree(ORIGIN) == len(IDS)
    else:
        assert mesh.graph.degree(ORIGIN) == 3


def test_generation_is_reproducible_by_seed():
    a = build_topology(IDS, settings(topology="small_world", seed=5)).to_dict()
    b = build_topology(IDS, settings(topology="small_world", seed=5)).to_dict()
    c = build_topology(IDS, settings(topology="small_world", seed=6)).to_dict()
    assert a == b and a != c


def line() -> Mesh:
    m = Mesh()
    m.add_edges([(ORIGIN, "a"), ("a", "b"), ("b", "c"), ("a", "d"), ("d", "c")])
    return m


def test_routing_tree_gives_shortest_paths_from_origin():
    tree = line().routing_tree()
    assert tree.path("c") in (["orchestrator", "a", "b", "c"], ["orchestrator", "a", "d", "c"])
    assert tree.depth("c") == 3
    assert tree.path("nope") == []


def test_routing_avoids_unhealthy_relays():
    tree = line().routing_tree({"b": "offline"})
    assert tree.path("c") == ["orchestrator", "a", "d", "c"]
    assert not tree.reachable("b") and tree.avoided["b"] == "offline"
    tree = line().routing_tree({"b": "offline", "d": "offline"})
    assert not tree.reachable("c")


def test_isolate_cuts_edges_and_reinstate_restores_them():
    m = line()
    cut = m.isolate("a")
    assert sorted(cut) == ["b", "d", ORIGIN]
    assert m.neighbours("a") == []
    tree = m.routing_tree()
    assert not tree.reachable("c") and tree.avoided["a"] == "isolated"
    assert m.partitions() == [["b", "c", "d"]]
    assert sorted(m.reinstate("a")) == ["b", "d", ORIGIN]
    assert m.routing_tree().reachable("c") and m.partitions() == []


def test_reinstate_between_two_isolated_neighbours_restores_their_edge_last():
    m = line()
    m.isolate("b")
    m.isolate("c")
    m.reinstate("b")
    assert "c" not in m.neighbours("b")
    m.reinstate("c")
    assert "c" in m.neighbours("b")


def test_origin_cannot_be_isolated_or_removed():
    m = line()
    with pytest.raises(MeshError):
        m.isolate(ORIGIN)
    with pytest.raises(MeshError):
        m.remove_node(ORIGIN)
    with pytest.raises(MeshError, match="not in the mesh"):
        m.isolate("ghost")


def test_explicit_edges():
    mesh = build_topology(["x", "y"], settings(topology="explicit", edges=[["orchestrator", "x"], ["x", "y"]]))
    assert mesh.routing_tree().path("y") == [ORIGIN, "x", "y"]


def test_reachable_if_reinstated_follows_cut_edges_both_ways():
    m = Mesh()
    # orchestrator - a - x(isolated) - b - y(isolated) - c ; and d hangs off y only
    m.add_edges([(ORIGIN, "a"), ("a", "x"), ("x", "b"), ("b", "y"), ("y", "c"), ("y", "d")])
    m.isolate("x")
    m.isolate("y")
    assert m.routing_tree().reachable("a") and not m.routing_tree().reachable("b")
    assert m.reachable_if_reinstated() == {ORIGIN, "a", "x", "b", "y", "c", "d"}
    assert dict(m.kept_edges) == {"x": ("a", "b"), "y": ("b", "c", "d")}


def _reference_depths(mesh: Mesh, blocked: set[str]) -> dict[str, int]:
    """Breadth-first depths over the networkx graph itself, not entering ``blocked``."""
    graph = mesh.graph.subgraph(v for v in mesh.graph if v not in blocked or v == ORIGIN)
    return nx.single_source_shortest_path_length(graph, ORIGIN)


def test_array_search_matches_networkx_through_isolations_faults_and_joins():
    rng = random.Random(7)
    ids = [f"n{i}" for i in range(300)]
    mesh = build_topology(ids, settings(topology="small_world", degree=4, seed=3, origin_links=2))
    for round_ in range(12):
        kind = round_ % 4
        if kind == 0:
            for v in rng.sample(ids, 6):
                mesh.isolate(v)
        elif kind == 1:
            for v in rng.sample(sorted(mesh.isolated), min(3, len(mesh.isolated))):
                mesh.reinstate(v)
        elif kind == 2:
            a = rng.choice(ids)
            for b in list(mesh.graph.adj[a])[:2]:
                mesh.cut_edge(a, b)
        else:
            new = f"j{round_}"
            ids.append(new)
            mesh.add_node(new)
            mesh.add_edges([(new, rng.choice(ids[:-1]))])
        avoid = {v: "offline" for v in rng.sample(ids, 10)}
        tree = mesh.routing_tree(avoid)
        depths = _reference_depths(mesh, set(avoid))
        reached = {v for v in depths if v != ORIGIN}
        assert set(tree.parent) == reached
        for v in reached:  # a parent is a live neighbour one level up
            p = tree.parent[v]
            assert mesh.graph.has_edge(v, p) and depths[p] == depths[v] - 1
            assert tree.path(v)[0] == ORIGIN and len(tree.path(v)) == depths[v] + 1
        assert "nowhere" not in tree.parent and tree.parent.get("nowhere") is None
        expected = {frozenset(c) for c in nx.connected_components(mesh.graph.subgraph(
            v for v in mesh.graph if v != ORIGIN and v not in reached and v not in avoid and v not in mesh.isolated))}
        assert {frozenset(g) for g in mesh.partitions(tree)} == expected


def test_a_change_made_straight_on_the_graph_reaches_the_next_search():
    m = build_topology(IDS, settings(topology="star"))
    assert "n3" in m.routing_tree().parent
    m.graph.remove_edge(ORIGIN, "n3")
    assert "n3" not in m.routing_tree().parent
    assert m.partitions() == [["n3"]]
    m.graph.add_edge("n3", "n4")
    assert m.routing_tree().path("n3") == [ORIGIN, "n4", "n3"]
