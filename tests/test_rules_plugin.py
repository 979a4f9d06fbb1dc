"""Rulesets inside the tick: results, states, actions, Python rules beside them, hot reload, engine failures."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import beat, config_from
from wyneos_core.builtin.rulesets import runner_of
from wyneos_core.cli import main
from wyneos_core.rules.loader import RulesetError
from wyneos_core.tick import Orchestrator

NODES = """
heartbeat: {interval: 5, stale_after: 15, offline_after: 40, max_clock_skew: 30}
mesh: {topology: ring, origin_links: 2, seed: 1}
nodes:
  - {id: n01}
  - {id: n02}
  - {id: n03}
  - {id: n04}
"""

GOVERNANCE = """\
ruleset: t-governance
stage: governance
rules:
  - id: load-ceiling-t
    description: load below 0.9
    require: node.load is missing or node.load < 0.9
    for: 1 tick
    severity: critical
    message: "load {node.load:.2f}"
  - id: has-region
    description: region declared
    require: has(node.metadata.region)
"""

HEALING = """\
ruleset: t-healing
stage: healing
rules:
  - id: shed
    description: overloaded nodes shed load
    when: node.load > 0.9
    then:
      - reduce_load: {target_load: 0.5, node: "{node.id}"}
"""


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()  # make sure the modification stamp moves even within one clock tick
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _make(clock, tmp_path: Path, *, disable="[licence, healing, enforcement]", paths=None, engine=None) -> Orchestrator:
    (tmp_path / "gov.yaml").exists() or _write(tmp_path / "gov.yaml", GOVERNANCE)
    (tmp_path / "heal.yaml").exists() or _write(tmp_path / "heal.yaml", HEALING)
    rulesets = {"paths": paths or [str(tmp_path / "gov.yaml"), str(tmp_path / "heal.yaml")]}
    if engine:
        rulesets["engine"] = engine
    config = config_from(NODES + f"plugins: {{disable: {disable}}}\n", rulesets=rulesets)
    orch = Orchestrator(config, clock=clock, load_entrypoints=False, store=False)
    return orch


def test_governance_results_states_and_transitions(clock, tmp_path: Path) -> None:
    orch = _make(clock, tmp_path)
    with orch:
        beat(orch, clock, "n01", "n02", "n03", load=0.3, region="eu")
        beat(orch, clock, "n04", load=0.95)
        r1 = orch.tick()
        mine = [r for r in r1.results if r.source == "t-governance"]
        by = {(r.rule_id, r.node_id): r for r in mine}
        assert by[("load-ceiling-t", "n04")].state == "pending" and not by[("load-ceiling-t", "n04")].passed
        assert by[("has-region", "n04")].state == "firing"
        assert r1.rule_summary["load-ceiling-t"] == {"passed": 3, "failed": 1}
        assert {"kind": "rule", "rule_id": "load-ceiling-t", "node_id": "n04", "from": "inactive", "to": "pending",
                "ruleset": "t-governance"} in r1.transitions
        # the builtin enforcement plugin is off; builtin governance (Python rules) still runs beside
        assert r1.rule_summary["heartbeat-fresh"] == {"passed": 4, "failed": 0}

        clock.advance(5)
        beat(orch, clock, "n01", "n02", "n03", load=0.3, region="eu")
        beat(orch, clock, "n04", load=0.95)
        r2 = orch.tick()
        hit = [r for r in r2.results if r.rule_id == "load-ceiling-t" and r.node_id == "n04"]
        assert hit[0].state == "firing" and hit[0].message == "load 0.95"
        assert any(t["to"] == "firing" and t["node_id"] == "n04" for t in r2.transitions)
        shed = [a for a in r2.proposed if a.origin == "ruleset:t-healing/shed"]
        assert [(a.type, a.target, a.params) for a in shed] == [("reduce_load", "n04", {"target_load": 0.5,
                                                                                         "node": "n04"})]
        assert shed[0].reason == "overloaded nodes shed load"


def test_builtin_enforcement_acts_on_firing_ruleset_results_only(clock, tmp_path: Path) -> None:
    orch = _make(clock, tmp_path, disable="[licence, healing]")
    with orch:
        beat(orch, clock, "n01", "n02", "n03", "n04", load=0.95, region="eu")
        r1 = orch.tick()  # pending: no quarantine yet
        assert not [a for a in r1.proposed if a.type == "quarantine" and "load-ceiling-t" in a.reason]
        clock.advance(5)
        beat(orch, clock, "n01", "n02", "n03", "n04", load=0.95, region="eu")
        r2 = orch.tick()
        quarantined = {a.target for a in r2.proposed if a.type == "quarantine" and "load-ceiling-t" in a.reason}
        assert quarantined == {"n01", "n02", "n03", "n04"}


def test_hot_reload_swaps_valid_edits_and_refuses_invalid_ones(clock, tmp_path: Path) -> None:
    orch = _make(clock, tmp_path)
    gov = tmp_path / "gov.yaml"
    with orch:
        beat(orch, clock, "n01", "n02", "n03", "n04", load=0.3)
        r = orch.tick()
        assert r.rule_summary["has-region"]["failed"] == 4

        _write(gov, GOVERNANCE.replace("require: has(node.metadata.region)", "require: node.load < 0.2"))
        clock.advance(5)
        beat(orch, clock, "n01", "n02", "n03", "n04", load=0.3)
        r = orch.tick()
        assert any("reloaded 't-governance'" in n for n in r.notes)
        assert r.rule_summary["has-region"]["failed"] == 4  # new condition: load 0.3 is not < 0.2

        _write(gov, GOVERNANCE.replace("require: has(node.metadata.region)", "require: node.metadata.__class__"))
        clock.advance(5)
        beat(orch, clock, "n01", "n02", "n03", "n04", load=0.1)
        r = orch.tick()
        refused = [n for n in r.notes if "invalid edit" in n]
        assert refused and "gov.yaml:" in refused[0] and "still running the last good version" in refused[0]
        assert r.rule_summary["has-region"] == {"passed": 4, "failed": 0}  # the last good ruleset ran
        assert any(e.kind == "invalid_ruleset" for e in r.errors)

        clock.advance(5)
        beat(orch, clock, "n01", "n02", "n03", "n04", load=0.1)
        r = orch.tick()
        assert not [n for n in r.notes if "invalid edit" in n]  # reported once, not every tick

        _write(gov, GOVERNANCE)
        clock.advance(5)
        beat(orch, clock, "n01", "n02", "n03", "n04", load=0.1)
        r = orch.tick()
        assert any("reloaded" in n for n in r.notes)
        assert r.rule_summary["has-region"]["failed"] == 4


def test_a_broken_ruleset_stops_the_start_with_file_and_line(clock, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOVERNANCE.replace("node.load < 0.9", "node.load < 0.9 and bogus"))
    with pytest.raises(RulesetError) as info:
        _make(clock, tmp_path, paths=[str(bad)])
    assert f"{bad}:6:58:" in str(info.value) and "unknown name 'bogus'" in str(info.value)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(NODES + f"rulesets: {{paths: [bad.yaml]}}\nstate: {{path: ':memory:'}}\n")
    assert main(["tick", "--config", str(cfg)]) == 2
    assert f"{bad}:6:58:" in capsys.readouterr().err


def test_shipped_rulesets_resolve_by_builtin_prefix(clock, tmp_path: Path) -> None:
    orch = _make(clock, tmp_path, paths=["builtin:"], disable="[licence, governance, healing, enforcement]")
    names = sorted(rs.name for rs in runner_of(orch.pm).rulesets())
    assert names == ["governance", "healing", "licence-enforcement"]
    with orch:
        beat(orch, clock, "n01", "n02", "n03", load=0.3, region="eu", version="2.4.1")
        r = orch.tick()
    # no licence step: the licence is "not evaluated", never a failure (docs/enforcement.md)
    assert not [a for a in r.proposed if a.type == "isolate"]
    # n04 never reported: it fails version-reported ("no version reported"), not the version floor
    assert {r.node_id for r in r.results if r.rule_id == "version-reported"} == {"n04"}
    assert not [r for r in r.results if r.rule_id == "version-floor"]
    assert all(a.origin.startswith("ruleset:") for a in r.proposed)
    with pytest.raises(RulesetError, match="no shipped ruleset 'nope'"):
        _make(clock, tmp_path, paths=["builtin:nope"])


@pytest.mark.slow
def test_a_durable_worker_crash_is_reported_and_the_tick_goes_on(clock, tmp_path: Path) -> None:
    orch = _make(clock, tmp_path, engine="durable")
    with orch:
        beat(orch, clock, "n01", "n02", "n03", "n04", load=0.95, region="eu")
        r1 = orch.tick()
        runner = runner_of(orch.pm)
        engine = next(l.engine for l in runner.loaded.values() if l.ruleset.name == "t-governance")
        assert engine.name == "durable" and engine.pid
        os.kill(engine.pid, signal.SIGKILL)
        time.sleep(0.1)
        clock.advance(5)
        beat(orch, clock, "n01", "n02", "n03", "n04", load=0.95, region="eu")
        r2 = orch.tick()
        errors = [e for e in r2.errors if e.kind == "engine"]
        assert errors and "died" in errors[0].error and "native engine" in errors[0].error
        # results still came (from the native fallback) and the state machine moved on
        assert r2.rule_summary["load-ceiling-t"] == {"passed": 0, "failed": 4}
        assert any(t["to"] == "firing" for t in r2.transitions)
        clock.advance(5)
        beat(orch, clock, "n01", "n02", "n03", "n04", load=0.95, region="eu")
        r3 = orch.tick()
        assert not [e for e in r3.errors if e.kind == "engine"]  # a new worker took over
