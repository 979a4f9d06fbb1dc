"""The neighbour lists the orchestrator seals for agents (``service.neighbour_book.NeighbourBook``),
read from a real registry and mesh: after a tick, a list whose sources did not change is
handed out again without being listed or sealed again, and any change to what it was
read from (the mesh's edges and isolations; a neighbour's registration, metadata,
fingerprint or isolation in the registry) gives the list the registry and mesh give now.
The lists are checked against a list made from scratch by a fresh book each time."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from wyneos_core.licensing.envelope import seal
from wyneos_core.licensing.keys import generate_key
from wyneos_core.mesh import Mesh
from wyneos_core.model import ORIGIN
from wyneos_core.registry import Registry
from wyneos_core.service.neighbour_book import NeighbourBook

SETTINGS = {"stale_after": 18, "offline_after": 48, "max_clock_skew": 60, "unknown_nodes": "reject",
            "max_metadata_bytes": 8192, "max_load": 64, "max_nodes": 1000}


class Sealer:
    """Seals as the orchestrator key does (``licensing.envelope.seal``, a real Ed25519
    signature, with a key of its own) and counts its signatures."""

    def __init__(self) -> None:
        self.count = 0
        self.key = generate_key()

    def __call__(self, fmt: str, payload: dict) -> dict:
        self.count += 1
        return seal(fmt, payload, self.key)


def fleet(n: int = 6) -> tuple[Registry, Mesh]:
    registry = Registry(SETTINGS)
    mesh = Mesh()
    for i in range(n):
        registry.register(f"n{i}", now=0.0, metadata={"peer_address": f"127.0.0.1:{9000 + i}"},
                          fingerprint=f"sha256:{i:064x}")
        mesh.add_edges([(ORIGIN, f"n{i}")])
    mesh.add_edges([(f"n{i}", f"n{(i + 1) % n}") for i in range(n)])  # a ring among the nodes
    return registry, mesh


def tick(book: NeighbourBook, registry: Registry, mesh: Mesh, number: int) -> None:
    book.wyneos_tick_report(SimpleNamespace(registry=registry, mesh=mesh, tick=number))


def fresh_list(registry: Registry, mesh: Mesh, node_id: str) -> list | None:
    book = NeighbourBook(Sealer())
    tick(book, registry, mesh, 1)
    envelope = book.signed_for(node_id)
    return None if envelope is None else envelope["payload"]["neighbours"]


def test_an_unchanged_list_is_not_listed_or_sealed_again_after_a_tick():
    registry, mesh = fleet()
    sealer = Sealer()
    book = NeighbourBook(sealer)
    tick(book, registry, mesh, 1)
    first = book.signed_for("n1")
    assert [e["id"] for e in first["payload"]["neighbours"]] == ["n0", "n2"]
    assert sealer.count == 1
    for number in range(2, 6):
        tick(book, registry, mesh, number)
        assert book.signed_for("n1") is first  # the same envelope, not sealed again
    assert sealer.count == 1


@pytest.mark.parametrize("change", ["address", "fingerprint", "registry_isolation", "mesh_isolation", "edge_removed",
                                    "edge_added", "neighbour_left", "neighbour_back", "node_left"])
def test_a_change_to_what_the_list_was_read_from_gives_the_list_as_it_is_now(change):
    registry, mesh = fleet()
    book = NeighbourBook(Sealer())
    tick(book, registry, mesh, 1)
    before = book.signed_for("n1")["payload"]["neighbours"]
    if change == "address":
        registry.get("n2").metadata = {"peer_address": "127.0.0.1:7777"}
    elif change == "fingerprint":
        registry.get("n0").fingerprint = "sha256:" + "f" * 64
    elif change == "registry_isolation":
        registry.get("n2").isolated = True
    elif change == "mesh_isolation":
        mesh.isolate("n0")
    elif change == "edge_removed":
        mesh.graph.remove_edge("n1", "n2")
    elif change == "edge_added":
        mesh.add_edges([("n1", "n4")])
    elif change == "neighbour_left":
        registry.deregister("n2")
    elif change == "neighbour_back":
        registry.deregister("n2")
        tick(book, registry, mesh, 2)
        assert [e["id"] for e in book.signed_for("n1")["payload"]["neighbours"]] == ["n0"]
        registry.register("n2", now=1.0, metadata={"peer_address": "127.0.0.1:9102"}, fingerprint="sha256:" + "2" * 64)
    elif change == "node_left":
        registry.deregister("n1")
    tick(book, registry, mesh, 3)
    envelope = book.signed_for("n1")
    now = fresh_list(registry, mesh, "n1")
    assert (None if envelope is None else envelope["payload"]["neighbours"]) == now
    assert now != before


def test_random_changes_between_ticks_always_give_the_list_made_from_scratch():
    rng = random.Random(7)
    registry, mesh = fleet(8)
    sealer = Sealer()
    book = NeighbourBook(sealer)
    names = [f"n{i}" for i in range(8)]
    for number in range(1, 120):
        for _ in range(rng.choice([0, 0, 0, 1, 2])):  # most ticks change nothing
            v = rng.choice(names)
            node = registry.get(v)
            kind = rng.randrange(6)
            if kind == 0 and node is not None:
                node.metadata = {"peer_address": rng.choice(["127.0.0.1:9500", "127.0.0.1:9501", "not an address"])}
            elif kind == 1 and node is not None:
                node.fingerprint = rng.choice([None, "sha256:" + "a" * 64, "sha256:" + "b" * 64])
            elif kind == 2 and node is not None:
                node.isolated = not node.isolated
            elif kind == 3:
                (mesh.reinstate if mesh.is_isolated(v) else mesh.isolate)(v)
            elif kind == 4:
                w = rng.choice([x for x in names if x != v])
                if mesh.has_edge(v, w):
                    mesh.graph.remove_edge(v, w)
                else:
                    mesh.add_edges([(v, w)])
            elif kind == 5:
                if node is None:
                    registry.register(v, now=float(number), metadata={"peer_address": "127.0.0.1:9600"},
                                      fingerprint="sha256:" + "c" * 64)
                else:
                    registry.deregister(v)
        tick(book, registry, mesh, number)
        for v in rng.sample(names, 3):
            envelope = book.signed_for(v)
            assert (None if envelope is None else envelope["payload"]["neighbours"]) == \
                fresh_list(registry, mesh, v), (number, v)
    assert sealer.count < 3 * 119  # unchanged lists were handed out again, not sealed again


def test_a_tick_over_another_registry_and_mesh_lists_again():
    """A replica that takes over builds its own registry and mesh: a list kept from the
    old ones is not handed out because the new ones happen to read alike."""
    registry, mesh = fleet()
    book = NeighbourBook(Sealer())
    tick(book, registry, mesh, 1)
    assert [e["id"] for e in book.signed_for("n1")["payload"]["neighbours"]] == ["n0", "n2"]
    other, other_mesh = fleet()
    other.get("n2").metadata = {"peer_address": "127.0.0.1:7777"}
    tick(book, other, other_mesh, 2)
    assert book.signed_for("n1")["payload"]["neighbours"] == fresh_list(other, other_mesh, "n1")
    assert [e["address"] for e in book.signed_for("n1")["payload"]["neighbours"]] == ["127.0.0.1:9000",
                                                                                       "127.0.0.1:7777"]
