"""The node table: columns by slot, views that read and write them, slots reused safely."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wyneos_core.config import Config
from wyneos_core.intake import HeartbeatColumns
from wyneos_core.model import Heartbeat, Node, NodeStatus
from wyneos_core.registry import Registry

NOW = 1_700_000_000.0


def registry() -> Registry:
    return Registry(dict(Config.defaults()["heartbeat"]))


def test_a_view_reads_and_writes_the_columns_and_is_a_node():
    r = registry()
    view = r.register("a", now=NOW, metadata={"zone": "eu"}, licence_ref="l1")
    assert isinstance(view, Node)
    assert (view.status, view.last_seen, view.load, view.trust, view.trust_tier) == \
        (NodeStatus.UNKNOWN, None, None, None, None)
    r.accept(Heartbeat("a", NOW, 0.25), NOW)
    assert r["a"].load == 0.25 and type(r["a"].load) is float and r["a"].last_seen == NOW
    view.isolated = True
    view.trust, view.trust_tier = 0.75, "trusted"
    view.trust_tier = "quarantined-by-plugin"          # a name the table did not know: encoded too
    slot = r.table.index["a"]
    assert r.table.isolated[slot] and r.table.trust[slot] == 0.75
    assert r.get("a").trust_tier == "quarantined-by-plugin"
    assert view.snapshot() == Node("a", NodeStatus.UNKNOWN, NOW, 0.25, {"zone": "eu"}, "l1", None, NOW, True,
                                   None, 0.75, "quarantined-by-plugin")
    view.load = None
    assert math.isnan(r.table.load[slot]) and view.load is None


def test_a_slot_is_reused_and_an_old_view_refuses_to_read_the_new_node():
    r = registry()
    old = r.register("a", now=NOW)
    r.register("b", now=NOW)
    old.isolated = True
    slot_a = r.table.index["a"]
    gone = r.deregister("a")
    assert gone.id == "a" and gone.isolated and type(gone) is Node   # a value, no longer a view
    new = r.register("c", now=NOW + 1)
    assert r.table.index["c"] == slot_a                                    # the freed slot is taken
    assert not new.isolated and new.registered_at == NOW + 1                # ... and starts clean
    with pytest.raises(LookupError, match="'a' left the registry"):
        old.status
    assert [n.id for n in r] == ["c", "b"] and len(r) == 2 and "a" not in r


def test_a_frozen_copy_keeps_its_values_while_the_columns_change():
    r = registry()
    for i in range(5):
        r.register(f"n{i}", now=NOW)
    r.accept_all([Heartbeat(f"n{i}", NOW, 0.1 * i) for i in range(5)], NOW)
    r.refresh(NOW)
    frozen = r.table.freeze()
    r.accept_all([Heartbeat("n1", NOW + 5, 0.9)], NOW + 5)
    r["n2"].isolated = True
    r.deregister("n3")
    assert [n.load for n in frozen] == [0.0, 0.1, 0.2, pytest.approx(0.3), 0.4]
    assert frozen.status_counts() == {"online": 5, "stale": 0, "offline": 0, "unknown": 0, "isolated": 0}
    assert [n.id for n in frozen.worth_a_look({"n4"})] == ["n4"]
    assert [n.id for n in frozen.with_ids({"n3", "n0"})] == ["n0", "n3"]
    assert r.table.freeze().status_counts()["isolated"] == 1


@pytest.mark.parametrize("with_a_free_slot", [False, True])
def test_consecutive_frozen_copies_share_what_did_not_change(with_a_free_slot):
    r = registry()
    r.register_many([f"n{i}" for i in range(6)], now=NOW, licence_refs=["l"] * 6)
    if with_a_free_slot:
        r.deregister("n5")
    r.accept_all([Heartbeat(f"n{i}", NOW, 0.1 * i) for i in range(5)], NOW)
    first = r.table.freeze()
    second = r.table.freeze()
    t1, t2 = first.table, second.table
    assert t2.load is t1.load and t2.registered_at is t1.registered_at and t2.ids is t1.ids
    assert t2.metadata is t1.metadata and t2.licence_ref is t1.licence_ref
    with pytest.raises(ValueError):
        t2.load[0] = 1.0                                                 # shared: read only
    r.accept_all([Heartbeat("n1", NOW + 5, 0.9)], NOW + 5)
    r["n2"].metadata = {"zone": "eu"}
    third = r.table.freeze()
    t3 = third.table
    assert t3.load is not t2.load and t3.metadata is not t2.metadata
    assert t3.registered_at is t2.registered_at and t3.licence_ref is t2.licence_ref and t3.ids is t2.ids
    assert [n.load for n in first] == [n.load for n in second] == [0.0, 0.1, 0.2, pytest.approx(0.3), 0.4][:5] + \
        ([] if with_a_free_slot else [None])
    assert third[1].load == 0.9 and third[2].metadata == {"zone": "eu"} and second[2].metadata == {}
    r.register("late", now=NOW + 6)                                      # membership changed: copied anew
    fourth = r.table.freeze()
    assert fourth.table.registered_at is not t3.registered_at and "late" in fourth.ids()
    assert "late" not in third.ids()


def test_status_over_the_columns_matches_status_of():
    r = registry()
    ages = [None, 0.0, 17.9, 18.0, 18.1, 47.9, 48.0, 48.1, 1e9, math.inf]
    for i, age in enumerate(ages):
        r.register(f"n{i}", now=NOW - 100 if i % 2 else NOW)
        if age is not None:
            r[f"n{i}"].last_seen = NOW - age
    changes = r.refresh(NOW)
    for node in r:
        assert node.status is r.status_of(node, NOW), node.id
    assert set(changes) == {n.id for n in r if n.status is not NodeStatus.UNKNOWN}


def test_names_and_slots_in_bulk_follow_joins_and_leaves():
    r = registry()
    t = r.table
    r.register_many([f"n{i}" for i in range(6)], now=NOW)
    slots = t.slots_of(["n3", "n0", "n5"])
    assert slots.dtype.kind == "i" and slots.tolist() == [3, 0, 5]
    assert t.ids_at(slots) == ["n3", "n0", "n5"] and t.ids_at([1]) == ["n1"]
    r.deregister("n3")
    assert t.slots_of(["n3", "n4", 7, "nope"]).tolist() == [-1, 4, -1, -1]    # not registered: -1
    assert t.slots_of(["n3", "n1"], missing=-9).tolist() == [-9, 1]
    assert t.slot_of("n3") is None and t.slot_of(["unhashable"]) is None and t.slot_of("n4") == 4
    r.register("late", now=NOW)
    assert t.slot_of("late") == 3 and t.slots_of(["late"]).tolist() == [3]   # the freed slot, taken
    assert t.slots_of([]).tolist() == []


def test_ids_in_bulk_with_and_without_free_slots():
    r = registry()
    t = r.table
    names = [f"n{i}" for i in range(1000)]
    r.register_many(names, now=NOW)
    assert r.ids() == names and r.nodes().ids() is not t.ids               # a copy, not the live list
    picked = t.slots_of(names[::-3])
    assert t.ids_at(picked) == names[::-3] and t.ids_at(picked[:5]) == names[::-3][:5]
    shared = r.nodes().ids()
    assert shared is r.nodes().ids() is t.freeze().ids() == names               # one copy per membership
    assert r.ids() is not shared and r.ids() == names                        # the caller's own list
    r.deregister("n7")
    assert r.ids() == names[:7] + names[8:] and t.ids_at(t.slots()) == r.ids()
    assert shared == names and r.nodes().ids() == r.ids()                    # the old copy did not change
    r.register("n7b", now=NOW)                                               # every slot taken again
    assert r.nodes().ids() == names[:7] + ["n7b"] + names[8:] and shared == names


def test_the_id_index_follows_churn_as_a_dict_would_and_costs_a_fraction_of_one():
    import random
    import tracemalloc

    from wyneos_core.model import Heartbeat as Hb
    from wyneos_core.names import NameIndex

    r = registry()
    t = r.table
    assert isinstance(t.index, NameIndex)
    rng = random.Random(3)
    want: dict[str, int] = {}
    for step in range(400):
        if rng.random() < 0.3 and want:                                     # leave: the slot is freed
            gone = rng.choice(sorted(want))
            r.deregister(gone)
            del want[gone]
        elif rng.random() < 0.2:                                            # many join at once
            fresh = [f"m{step}-{k}" for k in range(rng.randrange(1, 40))]
            want.update(zip(fresh, r.register_many(fresh, now=NOW).tolist()))
        else:
            node_id = f"n{rng.randrange(300)}"
            if node_id not in want:
                r.register(node_id, now=NOW)
                want[node_id] = t.slot_of(node_id)
        asked = rng.sample(sorted(want), min(5, len(want))) + ["never", "n-1"]
        assert t.slots_of(asked).tolist() == [want.get(a, -1) for a in asked]
        assert all(t.ids[want[a]] == a for a in asked if a in want) and len(r) == len(want)
    with pytest.raises(Exception, match="already registered"):
        r.register_many(["fresh-1", next(iter(want))], now=NOW)
    assert "fresh-1" not in r                                               # one bad id refuses them all
    accepted, rejected = r.accept_all([Hb(a, NOW, 0.5) for a in sorted(want)] + [Hb("stranger", NOW, 0.5)], NOW)
    assert accepted == len(want) and all(t.load[s] == 0.5 for s in want.values())

    names = [f"node-{i:06d}" for i in range(50_000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = registry().table
    table.add_many(names, registered_at=NOW)
    per_node = (tracemalloc.get_traced_memory()[0] - before) / len(names)
    tracemalloc.stop()
    assert per_node < 62 + 8 + 32 + 24, per_node  # columns, ids, metadata/licence/fingerprint lists, index
    assert table.slots_of(names[::-7]).tolist() == list(range(len(names)))[::-7]


def test_a_frozen_copy_keeps_only_a_nodes_fields_and_one_value_columns_as_that_value():
    import tracemalloc

    r = registry()
    n = 20_000
    r.register_many([f"n{i}" for i in range(n)], now=NOW)
    r.accept_columns(HeartbeatColumns([f"n{i}" for i in range(n)], np.full(n, NOW), np.arange(n) / n), NOW)
    r["n7"].isolated = True
    r.refresh(NOW)
    tracemalloc.start()
    frozen = r.table.freeze()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    t = frozen.table
    for name in ("last_seen", "registered_at", "last_rollback", "trust", "tier", "status"):
        assert getattr(t, name).strides == (0,), name                   # one value: held as that value
    assert t.load.strides != (0,) and t.isolated.strides != (0,) and not hasattr(t, "licence_stamp")
    assert len(t.metadata) == len(t.fingerprint) == n and list(t.fingerprint[:3]) == [None] * 3
    assert t.metadata[n - 1] == {} and t.metadata[-1] == {} and type(t.fingerprint) is not list  # one value
    with pytest.raises(IndexError):
        t.metadata[n]
    # ids (8 bytes), load (8) and isolation (1): metadata, licence refs, fingerprints are one value each
    assert held < (8 + 8 + 1) * n + 4096, held / n
    assert frozen[7].isolated and frozen[8].load == 8 / n and math.isnan(t.last_rollback[3])
    assert [n.id for n in frozen.worth_a_look(set())] == ["n7"] and frozen.status_counts()["isolated"] == 1
    r["n8"].last_rollback = NOW
    assert frozen[8].last_rollback is None and r.table.freeze()[8].last_rollback == NOW
