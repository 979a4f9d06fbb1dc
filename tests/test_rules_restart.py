"""Rule states survive a restart on a real SQLite state file: a ``for:`` keeps counting,
a firing rule keeps firing, and no action is cleared and issued again because of it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import beat, config_from
from wyneos_core.builtin.rulesets import runner_of
from wyneos_core.store import StateStore
from wyneos_core.tick import Orchestrator

CLUSTER = """
heartbeat: {interval: 5, stale_after: 15, offline_after: 40, max_clock_skew: 30}
mesh: {topology: ring, origin_links: 2, seed: 1}
plugins: {disable: [licence, healing, enforcement]}
nodes:
  - {id: node-01}
  - {id: node-02}
  - {id: node-03}
"""

HEALING = """\
ruleset: t-heal
stage: healing
rules:
  - id: shed
    description: overloaded nodes shed load
    when: node.load > 0.9
    for: 3 ticks
    then:
      - reduce_load: {target_load: 0.5}
"""

GOVERNANCE = """\
ruleset: t-gov
stage: governance
rules:
  - id: ceiling
    description: load below 0.9
    require: node.load < 0.9
    for: 2 ticks
"""


def _orchestrator(clock, tmp_path: Path) -> Orchestrator:
    (tmp_path / "heal.yaml").write_text(HEALING)
    (tmp_path / "gov.yaml").write_text(GOVERNANCE)
    config = config_from(CLUSTER, rulesets={"paths": [str(tmp_path / "heal.yaml"), str(tmp_path / "gov.yaml")]})
    return Orchestrator(config, clock=clock, load_entrypoints=False, store=StateStore.open(tmp_path / "state.db"))


def _tick(orch: Orchestrator, clock, hot: str = "node-03"):
    beat(orch, clock, *[n for n in ("node-01", "node-02", "node-03") if n != hot], load=0.3)
    beat(orch, clock, hot, load=0.95)
    report = orch.tick()
    clock.advance(5)
    return report


def _state(report, rule: str, node: str) -> str | None:
    return next((r.state for r in report.results if r.rule_id == rule and r.node_id == node), None)


def _events(path: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT e.tick, a.type, e.state FROM action_events e JOIN actions a "
                            "ON a.id = e.action_id ORDER BY e.seq").fetchall()


def test_a_firing_rule_keeps_its_action_across_a_restart(clock, tmp_path: Path) -> None:
    orch = _orchestrator(clock, tmp_path)
    with orch:
        for _ in range(5):
            report = _tick(orch, clock)
    store = StateStore.open(tmp_path / "state.db")
    [action] = [a for a in store.actions("in_force") if a["type"] == "reduce_load"]
    assert action["target"] == "node-03"
    store.close()
    assert _state(report, "ceiling", "node-03") == "firing"

    again = _orchestrator(clock, tmp_path)
    with again:
        states = runner_of(again.pm).loaded
        shed = next(l for l in states.values() if l.ruleset.name == "t-heal").trackers["shed"]
        assert shed.state_of("node-03") == "firing", "the rule state came back from the state file"
        for _ in range(3):
            report = _tick(again, clock)
            assert _state(report, "ceiling", "node-03") == "firing"
    events = _events(tmp_path / "state.db")
    assert [e for e in events if e[1] == "reduce_load" and e[2] == "cleared"] == []
    issued = [e for e in events if e[1] == "reduce_load" and e[2] == "proposed"]
    assert len(issued) == 1, f"issued once, not again after the restart: {events}"


def test_a_pending_for_keeps_counting_across_a_restart(clock, tmp_path: Path) -> None:
    orch = _orchestrator(clock, tmp_path)
    with orch:
        for _ in range(3):  # true for 3 ticks: fires on the 4th
            report = _tick(orch, clock)
        assert _state(report, "ceiling", "node-03") == "firing"
    assert not [e for e in _events(tmp_path / "state.db") if e[1] == "reduce_load"]

    again = _orchestrator(clock, tmp_path)
    with again:
        report = _tick(again, clock)
    assert [(a.type, a.target) for a in report.proposed if a.origin == "ruleset:t-heal/shed"] == [
        ("reduce_load", "node-03")], "the 4th tick in a row fires, restart or not"


def test_a_damaged_rule_state_document_is_skipped(clock, tmp_path: Path) -> None:
    orch = _orchestrator(clock, tmp_path)
    with orch:
        for _ in range(2):
            _tick(orch, clock)
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("UPDATE carried SET doc = ? WHERE name = 'rules/t-heal'",
                     ('{"shed": {"node-03": ["firing", "x", null, null, null], "node-02": "junk"}}',))
        conn.execute("UPDATE carried SET doc = 'not json' WHERE name = 'rules/t-gov'")
    again = _orchestrator(clock, tmp_path)
    with again:
        report = _tick(again, clock)  # starts anew on those rules, and runs
        assert _state(report, "ceiling", "node-03") == "pending"
        shed = next(l for l in runner_of(again.pm).loaded.values() if l.ruleset.name == "t-heal").trackers["shed"]
        assert shed.state_of("node-03") == "pending" and shed.state_of("node-02") == "inactive"
