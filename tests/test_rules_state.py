"""Rule states in arrays by slot: a slot's next node starts afresh; only failing or
changing (rule, node) pairs become objects; states follow nodes between slot spaces."""

from __future__ import annotations

from pathlib import Path

from wyneos_core.config import Config
from wyneos_core.registry import Registry
from wyneos_core.rules.loader import load_ruleset
from wyneos_core.rules.runtime import RulesetRunner

RULES = """ruleset: slots
stage: governance
rules:
  - id: cool
    description: load below 0.5 for three ticks in a row
    require: node.load is missing or node.load < 0.5
    for: 3 ticks
    keep_firing_for: 2 ticks
    message: hot
"""


def setup(tmp_path: Path, count: int = 4):
    path = tmp_path / "slots.yaml"
    path.write_text(RULES)
    runner = RulesetRunner.from_rulesets([load_ruleset(path)])
    registry = Registry({**Config.defaults()["heartbeat"], "max_nodes": 10_000})
    for i in range(count):
        registry.register(f"n{i}", now=0.0).load = 0.1
    return runner, registry


def tick(runner: RulesetRunner, nodes, number: int):
    transitions: list = []
    errors: list = []
    results = runner.governance(nodes, {}, tick=number, env=RulesetRunner.environment(nodes, 100.0 + number),
                                transitions=transitions, errors=errors)
    assert errors == []
    return {r.node_id: r.state for r in results}, transitions


def test_a_node_taking_a_freed_slot_starts_with_its_own_counter(tmp_path: Path) -> None:
    runner, registry = setup(tmp_path)
    registry.get("n1").load = 0.9
    assert tick(runner, registry.nodes(), 1)[0] == {"n1": "pending"}
    assert tick(runner, registry.nodes(), 2)[0] == {"n1": "pending"}
    slot = registry.table.index["n1"]
    registry.deregister("n1")
    registry.register("late", now=0.0).load = 0.9
    assert registry.table.index["late"] == slot  # the freed slot, taken
    states, transitions = tick(runner, registry.nodes(), 3)
    assert states == {"late": "pending"}  # n1 would fire at tick 4: its wait is not late's
    assert {"rule_id": "cool", "node_id": "n1", "from": "pending", "to": "inactive", "ruleset": "slots",
            "kind": "rule", "why": "node left the cluster"} in transitions
    assert tick(runner, registry.nodes(), 4)[0] == {"late": "pending"}
    assert tick(runner, registry.nodes(), 5)[0] == {"late": "pending"}
    assert tick(runner, registry.nodes(), 6)[0] == {"late": "firing"}


def test_a_firing_node_leaving_keeps_nothing_firing_for_the_next(tmp_path: Path) -> None:
    runner, registry = setup(tmp_path)
    registry.get("n2").load = 0.9
    for number in range(1, 5):
        states, _ = tick(runner, registry.nodes(), number)
    assert states == {"n2": "firing"}
    slot = registry.table.index["n2"]
    registry.deregister("n2")
    registry.register("fresh", now=0.0).load = 0.1  # complies: nothing to keep firing
    assert registry.table.index["fresh"] == slot
    states, transitions = tick(runner, registry.nodes(), 5)
    assert states == {}
    assert [(t["node_id"], t["from"], t["to"]) for t in transitions] == [("n2", "firing", "resolved")]


def test_only_failing_or_changing_pairs_are_objects(tmp_path: Path) -> None:
    runner, registry = setup(tmp_path, 3000)
    for node_id in ("n5", "n500", "n2999"):
        registry.get(node_id).load = 0.9
    tick(runner, registry.nodes(), 1)
    tracker = next(iter(runner.loaded.values())).trackers["cool"]
    assert sorted(tracker.owner.values()) == ["n2999", "n5", "n500"]
    assert tracker.code.itemsize == 1 and tracker.since_tick.itemsize == 4 and tracker.since_at is None
    assert len(tracker.code) >= 3000


def test_states_follow_nodes_from_a_plain_list_to_the_table_and_back(tmp_path: Path) -> None:
    runner, registry = setup(tmp_path)
    registry.get("n3").load = 0.9
    plain = [view.snapshot() for view in registry.nodes()][::-1]  # another order, no table
    assert tick(runner, plain, 1)[0] == {"n3": "pending"}
    assert tick(runner, registry.nodes(), 2)[0] == {"n3": "pending"}
    assert tick(runner, plain, 3)[0] == {"n3": "pending"}
    states, transitions = tick(runner, registry.nodes(), 4)
    assert states == {"n3": "firing"}
    assert [(t["node_id"], t["from"], t["to"]) for t in transitions] == [("n3", "pending", "firing")]
