from __future__ import annotations

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
