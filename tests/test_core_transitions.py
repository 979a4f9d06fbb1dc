"""A tick report's transitions: the fleet's status changes held as columns, read as dicts."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from conftest import beat, cluster_yaml, config_from
from wyneos_core.builtin.report import summary_lines
from wyneos_core.config import Config
from wyneos_core.model import NodeStatus
from wyneos_core.registry import Registry
from wyneos_core.tick import Orchestrator
from wyneos_core.transitions import StatusChanges, Transitions, status_ids

NOW = 1_700_000_000.0
NAMES = ("online", "stale", "offline", "unknown")


def as_dicts(ids, old, new):
    return [{"kind": "status", "node_id": i, "from": NAMES[o], "to": NAMES[n]} for i, o, n in zip(ids, old, new)]


def test_status_changes_read_as_the_list_of_dicts_they_stand_for():
    ids, old, new = ["a", "b", "c", "d"], [3, 3, 0, 3], [0, 0, 1, 2]
    t = Transitions([{"kind": "rule", "rule_id": "r", "node_id": "z", "from": "inactive", "to": "firing"}])
    t.add_status(StatusChanges(ids, np.array(old, np.int8), np.array(new, np.int8), NAMES))
    t.add_status(StatusChanges([], np.zeros(0, np.int8), np.zeros(0, np.int8), NAMES))  # nothing: no part
    t.append({"kind": "status", "node_id": "e", "from": "online", "to": "stale"})
    want = [{"kind": "rule", "rule_id": "r", "node_id": "z", "from": "inactive", "to": "firing"},
            *as_dicts(ids, old, new), {"kind": "status", "node_id": "e", "from": "online", "to": "stale"}]
    assert list(t) == want and t == want and len(t) == 6 and t.to_list() == want
    assert [t[k] for k in range(-6, 6)] == want + want and t[1:4] == want[1:4] and t[::-2] == want[::-2]
    with pytest.raises(IndexError):
        t[6]
    assert [c for chunk in t.chunks(4) for c in chunk] == want and [len(c) for c in t.chunks(4)] == [4, 2]
    assert t.status_ids() == status_ids(want) == ["a", "b", "c", "d", "e"]
    assert t.status_groups() == {("unknown", "online"): ["a", "b"], ("online", "stale"): ["c", "e"],
                                 ("unknown", "offline"): ["d"]}
    assert list(t.held()) == [want[0], want[-1]]
    t.insert(1, {"kind": "drift", "node_id": "y"})  # a change other than an append: made plain dicts
    del t[0]
    t[-1] = {"kind": "status", "node_id": "f", "from": "stale", "to": "online"}
    assert t == [{"kind": "drift", "node_id": "y"}, *want[1:5], t[-1]] and len(t) == 6
    assert json.loads(json.dumps(t.to_list())) == t.to_list()
    with pytest.raises(ValueError, match="2 ids for 1 old"):
        StatusChanges(["a", "b"], np.zeros(1, np.int8), np.zeros(2, np.int8), NAMES)


def test_refresh_gives_the_changes_as_columns_and_as_the_mapping():
    registry = Registry(dict(Config.defaults()["heartbeat"]))
    registry.register_many([f"n{i}" for i in range(10)], now=NOW - 100)
    for i in range(0, 10, 3):
        registry[f"n{i}"].last_seen = NOW - 20 * (i % 2)
    changes = registry.refresh_changes(NOW)
    assert changes.ids == [f"n{i}" for i in range(10)]                  # every node left "unknown"
    assert [changes.names[c] for c in changes.new.tolist()] == [registry[i].status.value for i in changes.ids]
    assert {changes.names[c] for c in changes.old.tolist()} == {"unknown"}
    assert registry.refresh(NOW) == {}                                   # nothing changed since
    registry["n1"].last_seen = NOW
    assert registry.refresh(NOW + 1) == {"n1": (NodeStatus.OFFLINE, NodeStatus.ONLINE)}


def test_the_fleets_status_changes_cost_a_few_bytes_a_node_not_a_dict_each():
    n = 20_000
    registry = Registry(dict(Config.defaults()["heartbeat"]))
    registry.register_many([f"node-{i:06d}" for i in range(n)], now=NOW - 100)
    registry.table.slots()                                              # cached by the table, not ours
    tracemalloc.start()
    transitions = Transitions()
    transitions.add_status(registry.refresh_changes(NOW))               # every node: unknown -> offline
    held = tracemalloc.get_traced_memory()[0]
    as_list = transitions.to_list()
    listed = tracemalloc.get_traced_memory()[0] - held
    tracemalloc.stop()
    assert len(transitions) == n and held < 12 * n < listed / 10, (held, listed)
    assert as_list[0] == {"kind": "status", "node_id": "node-000000", "from": "unknown", "to": "offline"}


def test_a_first_tick_lists_every_status_change(clock):
    n = 300
    config = config_from(cluster_yaml(n))
    orch = Orchestrator(config, clock=clock, load_entrypoints=False, store=False)
    try:
        clock.advance(1)
        beat(orch, clock, *[f"n{i:02d}" for i in range(1, n + 1)])
        report = orch.tick()
        changes = [t for t in report.transitions if t["kind"] == "status"]
        assert len(changes) == n and {(t["from"], t["to"]) for t in changes} == {("unknown", "online")}
        assert report.transitions.status_ids() == [t["node_id"] for t in changes]
        assert f"status   {n} unknown -> online" in "\n".join(summary_lines(report))
        assert report.to_dict()["transitions"] == changes               # the JSON form: plain dicts
    finally:
        orch.stop()
