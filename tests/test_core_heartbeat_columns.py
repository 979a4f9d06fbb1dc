"""Heartbeats as columns: a batch is refused whole when malformed (naming the field and
the node), and applied over the registry's columns it does what the same heartbeats as
``Heartbeat`` objects do, node by node (accepted, rejected and why, the columns after).
And nodes enrolled in bulk are as nodes registered one by one."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from wyneos_core.config import Config, load_config
from wyneos_core.intake import BatchError, HeartbeatColumns, HeartbeatQueue, QueueFull
from wyneos_core.model import Heartbeat
from wyneos_core.registry import Registry
from wyneos_core.tick import Orchestrator

NOW = 1_700_000_000.0


def registry(**settings) -> Registry:
    return Registry({**Config.defaults()["heartbeat"], **settings})


def columns_of(reg: Registry) -> list[tuple]:
    t = reg.table
    return [(t.ids[s], t.last_seen[s], t.load[s], t.last_rollback[s]) for s in t.slots().tolist()]


def same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
                                    for p, q in zip(a, b) for x, y in zip(p, q))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("unknown", ["reject", "register"])
def test_a_column_batch_does_what_the_same_heartbeats_do_one_by_one(seed, unknown):
    rng = random.Random(seed)
    by_objects, by_columns = registry(unknown_nodes=unknown), registry(unknown_nodes=unknown)
    ids = [f"n{i:03d}" for i in range(120)]
    for reg in (by_objects, by_columns):
        for node_id in ids:
            reg.register(node_id, now=NOW - 100)
    now = NOW
    for _ in range(6):
        picked = rng.sample(ids + [f"new{i}" for i in range(5)] + ["bad id", "orchestrator"], 80)
        stamps = [rng.choice([now, now - 1, now - 5, now + 10, now + 100, now - 200, now - 31]) for _ in picked]
        loads = [rng.choice([0.5, float("nan"), 0.0, 64.0, 65.0, 1e9, 3.25]) for _ in picked]
        objects = [Heartbeat(i, t, None if math.isnan(v) else v) for i, t, v in zip(picked, stamps, loads)]
        got_objects = by_objects.accept_all(objects, now)
        got_columns = by_columns.accept_columns(HeartbeatColumns(picked, stamps, loads), now)
        assert got_objects[0] == got_columns[0]
        assert sorted(map(str, got_objects[1])) == sorted(map(str, got_columns[1]))
        assert same(columns_of(by_objects), columns_of(by_columns))
        assert by_objects.joined == by_columns.joined
        now += rng.choice([1.0, 6.0, 60.0])


@pytest.mark.parametrize("make, field, node, why", [
    (lambda: HeartbeatColumns(["a", "b", "a"], [1.0, 2.0, 3.0]), "node_ids", "a", "appears twice"),
    (lambda: HeartbeatColumns(["a", 7], [1.0, 2.0]), "node_ids", None, "item 1 is not a string"),
    (lambda: HeartbeatColumns("ab", [1.0, 2.0]), "node_ids", None, "not a list of node ids"),
    (lambda: HeartbeatColumns(["a", "b"], [1.0]), "timestamp", None, "1 values for 2 node ids"),
    (lambda: HeartbeatColumns(["a", "b"], [1.0, float("nan")]), "timestamp", "b", "not a finite number"),
    (lambda: HeartbeatColumns(["a", "b"], [1.0, "2"]), "timestamp", "b", "not a number (str)"),
    (lambda: HeartbeatColumns(["a", "b"], [1.0, True]), "timestamp", "b", "not a number (bool)"),
    (lambda: HeartbeatColumns(["a", "b"], np.ones((2, 1))), "timestamp", None, "not a 1-D array"),
    (lambda: HeartbeatColumns(["a", "b"], [1.0, 2.0], [0.5, -0.1]), "load", "b", "not a load"),
    (lambda: HeartbeatColumns(["a", "b"], [1.0, 2.0], [math.inf, 0.1]), "load", "a", "not a load"),
    (lambda: HeartbeatColumns(["a", "b"], [1.0, 2.0], np.array(["x", "y"])), "load", None, "not a 1-D array"),
    (lambda: HeartbeatColumns(["x" * 129], [1.0]), "node_ids", "x" * 64 + "...", "longer than 128"),
])
def test_a_malformed_batch_is_refused_whole_naming_the_field_and_the_node(make, field, node, why):
    queue = HeartbeatQueue(maxlen=10)
    with pytest.raises(BatchError) as info:
        queue.put_columns(make())
    assert (info.value.field, info.value.node_id) == (field, node) and why in info.value.reason
    assert field in str(info.value) and (node is None or repr(node) in str(info.value))
    assert len(queue) == 0 and queue.drain().columns == []


def test_the_queue_counts_column_batches_and_refuses_one_that_does_not_fit():
    queue = HeartbeatQueue(maxlen=5)
    queue.put(Heartbeat("a", NOW))
    queue.put_columns(HeartbeatColumns(["b", "c", "d"], [NOW] * 3))
    assert len(queue) == 4 and queue.room() == 1
    with pytest.raises(QueueFull):
        queue.put_columns(HeartbeatColumns(["e", "f"], [NOW] * 2))
    assert len(queue) == 4 and queue.refused == 2
    with pytest.raises(TypeError):
        queue.put_columns([Heartbeat("e", NOW)])  # type: ignore[arg-type]
    drained = queue.drain()
    assert [h.node_id for h in drained] == ["a"] and [b.node_ids for b in drained.columns] == [["b", "c", "d"]]
    assert len(queue) == 0


def test_the_tick_applies_column_batches_from_the_intake():
    config = load_config(text="report: {stdout: none, json_path: null}\n")
    clock_now = [NOW]
    orch = Orchestrator(config, clock=lambda: clock_now[0], load_entrypoints=False, store=False)
    orch.registry.register_many(["a", "b", "c"], now=NOW)
    orch.intake.put_columns(HeartbeatColumns(["a", "b", "ghost"], [NOW, NOW - 1, NOW], [0.95, float("nan"), 0.1]))
    report = orch.tick()
    assert report.heartbeats_accepted == 2
    assert [(e["node_id"], e["field"]) for e in report.heartbeats_rejected] == [("ghost", "node_id")]
    assert orch.registry["a"].load == 0.95 and orch.registry["b"].load is None
    assert {n.id: n.status.value for n in report.nodes} == {"a": "online", "b": "online", "c": "unknown"}


def test_nodes_registered_in_bulk_are_as_nodes_registered_one_by_one():
    r = registry()
    r.register("first", now=NOW)
    slots = r.register_many(["a", "b", "c"], now=NOW + 1, licence_refs=["l1", None, "l3"])
    assert slots.tolist() == [1, 2, 3] and len(r) == 4
    one = registry()
    one.register("first", now=NOW)
    for node_id, ref in zip("abc", ["l1", None, "l3"]):
        one.register(node_id, now=NOW + 1, licence_ref=ref)
    assert [n.snapshot() for n in r] == [n.snapshot() for n in one]
    assert len(set(r.table.born[r.table.slots()].tolist())) == 4     # each its own stamp
    for bad, why in [(["d", "d"], "'d' appears twice"), (["e", "a"], "'a' is already registered"),
                     (["f", "bad id"], "'bad id' is not valid"), (["orchestrator"], "reserved")]:
        with pytest.raises(Exception, match=why):
            r.register_many(bad, now=NOW)
        assert len(r) == 4                                              # refused whole
