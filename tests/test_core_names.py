"""NameIndex: names to numbers over the owner's list, without a dict entry per name."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np

from wyneos_core.mesh import Mesh
from wyneos_core.names import NameIndex


def test_the_index_agrees_with_a_dict_through_adds_removals_and_bulk_lookups():
    rng = random.Random(7)
    names: list[str | None] = []
    index = NameIndex(names)
    want: dict[str, int] = {}
    free: list[int] = []
    for step in range(3000):
        what = rng.random()
        if what < 0.45:
            name = f"n{rng.randrange(800)}"
            if name not in want:
                number = free.pop() if free else len(names)
                if number == len(names):
                    names.append(name)
                names[number] = name
                index.add(name, number)
                want[name] = number
        elif what < 0.7 and want:
            name = rng.choice(sorted(want))
            number = want.pop(name)
            assert index.remove(name) == number and index.remove(name) is None
            names[number] = None
            free.append(number)
        elif what < 0.75:
            batch = [f"b{step}-{k}" for k in range(rng.randrange(60))]
            first = len(names)
            names.extend(batch)
            index.add_many(batch, np.arange(first, first + len(batch)))
            want.update(zip(batch, range(first, first + len(batch))))
        else:
            asked = [f"n{rng.randrange(800)}" for _ in range(30)] + [None, 5, ("t",), "x"]
            assert index.numbers(asked).tolist() == [want.get(a, -1) for a in asked]
            assert index.numbers(asked, missing=-7).tolist() == [want.get(a, -7) for a in asked]
            assert [index.get(a) for a in asked] == [want.get(a) for a in asked]
            assert all((a in index) == (a in want) for a in asked)
        assert len(index) == len(want)
    assert sorted(index) == sorted(want)
    assert index.numbers([["unhashable"], "x"]).tolist() == [-1, want.get("x", -1)]


def test_a_hit_is_confirmed_by_the_name_not_only_its_hash():
    names = ["alpha", "beta"]
    index = NameIndex(names)
    impostor = hash("beta")  # an int with the same hash as a stored name
    assert index.numbers([impostor, "beta", "gamma"]).tolist() == [-1, 1, -1]
    assert index.get(impostor) is None and impostor not in index


def test_the_index_costs_a_fraction_of_a_dict():
    names = [f"node-{i:06d}" for i in range(50_000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = NameIndex(names)
    compact = tracemalloc.get_traced_memory()[0] - before
    as_dict = dict(zip(names, range(len(names))))
    full = tracemalloc.get_traced_memory()[0] - before - compact
    tracemalloc.stop()
    assert compact * 2.5 < full, (compact, full)
    assert index.numbers(names[::-1]).tolist() == list(range(len(names)))[::-1] == [as_dict[n] for n in names[::-1]]


def test_the_mesh_numbers_vertices_through_its_index():
    mesh = Mesh()
    mesh.add_nodes(["a", "b", "c"])
    mesh.add_nodes(["c", "d"])                       # one already there: skipped
    assert mesh.numbers(["orchestrator", "a", "d", "zz"]).tolist() == [0, 1, 4, -1]
    mesh.add_edges([("orchestrator", "a"), ("a", "b")])
    mesh.remove_node("b")
    assert "b" not in mesh and mesh.numbers(["b"]).tolist() == [-1]
    mesh.add_node("e")                               # takes b's number
    assert mesh.numbers(["e"]).tolist() == [2] and mesh.neighbours("e") == []
    mesh.add_edges([("a", "e")])
    assert mesh.routing_tree().path("e") == ["orchestrator", "a", "e"]
    mesh.add_nodes(["f", "f", "g"])                  # a name twice: added once
    assert len(mesh) == 7 and sorted(mesh.to_dict()["nodes"]) == ["a", "c", "d", "e", "f", "g", "orchestrator"]
