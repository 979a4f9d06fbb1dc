"""Healing under hostile input and awkward meshes: bad actions, strand hold, isolations'
own partitions, safety stops that hold isolations, overload persistence, restarts."""

from __future__ import annotations

import pytest

from tests.conftest import beat, cluster_yaml
from wyneos_core import Action, hookimpl
from wyneos_core.builtin.decide import state_of
from wyneos_core.model import Heartbeat
from wyneos_core.rules.loader import RulesetError, load_ruleset
from wyneos_core.store import StateStore

HUB = """
heartbeat: {interval: 5, stale_after: 15, offline_after: 40, max_clock_skew: 30}
plugins: {disable: [licence]}
mesh:
  topology: explicit
  edges: [[orchestrator, a], [a, b], [a, c], [a, d], [orchestrator, e], [orchestrator, f],
          [orchestrator, g], [orchestrator, h], [orchestrator, i], [orchestrator, j]]
nodes: [{id: a}, {id: b}, {id: c}, {id: d}, {id: e}, {id: f}, {id: g}, {id: h}, {id: i}, {id: j}]
"""
EVERYONE = "abcdefghij"


def states(report, type_=None, target=None):
    return [e["state"] for e in report.lifecycle
            if (type_ is None or e["type"] == type_) and (target is None or e["target"] == target)]


def run_ticks(orch, clock, ticks, silent):
    """Tick ``ticks`` times; ``silent(t)`` names the nodes that send no heartbeat in tick t."""
    reports = []
    for _ in range(ticks):
        t = orch.tick_number + 1
        quiet = silent(t)
        orch.intake.put_many(Heartbeat(i, clock(), 0.3) for i in EVERYONE if i not in quiet)
        reports.append(orch.tick())
        clock.advance(5)
    return reports


# -- one bad action is reported on its own ---------------------------------------------------


class Hostile:
    """Proposes one unusable action of each kind next to a good one, every tick."""

    @hookimpl
    def wyneos_healing(self, ctx):
        return [Action("reduce_load", "a", "x", "bad", params={"target_load": "abc"}),
                Action("gate_feature", "b", "x", "bad", params={"features": 5}),
                Action("isolate", "orchestrator", "x", "bad"),
                Action("isolate", "ghost", "x", "bad"),
                Action("quarantine", "c", "legit", "good")]


def test_bad_actions_are_rejected_one_by_one_and_the_rest_is_carried(make_orchestrator, clock):
    orch = make_orchestrator(HUB, plugins=[Hostile()])
    reports = run_ticks(orch, clock, 3, lambda t: "")
    first = reports[0]
    errors = [e.error for e in first.errors if e.hook == "wyneos_decide"]
    assert len(errors) == 4 and all(e.startswith("action ") for e in errors)
    assert "params.target_load must be a number >= 0, got 'abc'" in errors[0]
    assert "params.features must be a non-empty list" in errors[1]
    assert "target 'orchestrator' is not a node of the cluster" in errors[2]
    assert {e.kind for e in first.errors} == {"invalid_result"}
    assert states(first, "reduce_load") == ["rejected"] and states(first, "isolate") == ["rejected", "rejected"]
    # the good action went the whole way, in the same tick
    assert states(first, "quarantine") == ["proposed", "approved", "propagated", "in_force"]
    assert orch.registry["c"].metadata["restrictions"] == {"quarantined": "legit"}
    # reported once while the same bad proposal repeats, not every tick
    assert reports[1].errors == [] and reports[2].errors == []
    assert not orch.registry["a"].isolated and "restrictions" not in orch.registry["b"].metadata


def test_propagate_refuses_a_bad_decided_action_and_carries_the_others(make_orchestrator, clock):
    class Decider:  # a third-party decide step: its items reach propagate unchecked by ours
        @hookimpl(tryfirst=True)
        def wyneos_decide(self, ctx):
            return [Action("gate_feature", "b", "x", "mine", params={"features": []}),
                    Action("gate_feature", "c", "x", "mine", params={"features": ["export"]})]

    orch = make_orchestrator(HUB, plugins=[Decider()])
    [report] = run_ticks(orch, clock, 1, lambda t: "")
    [error] = [e for e in report.errors if e.hook == "wyneos_propagate"]
    assert error.kind == "invalid_result" and "params.features must be a non-empty list" in error.error
    assert "gate_feature for 'b'" in error.error
    assert [d.target for d in report.deliveries] == ["c"]
    assert states(report, "gate_feature", "b") == ["failed"]


def test_gate_feature_names_features_as_a_list_or_one_comma_separated_string(make_orchestrator, clock):
    class Gate:
        @hookimpl
        def wyneos_enforcement(self, ctx):
            return [Action("gate_feature", "c", "x", "test", params={"features": "export, audit"}),
                    Action("gate_feature", "d", "x", "test", params={"features": ["export"]}),
                    Action("gate_feature", "e", "x", "test")]

    orch = make_orchestrator(HUB, plugins=[Gate()])
    run_ticks(orch, clock, 1, lambda t: "")
    gated = {n: orch.registry[n].metadata["restrictions"]["gated_features"] for n in "cde"}
    assert gated == {"c": ["audit", "export"], "d": ["export"], "e": ["*"]}  # never split into letters


def test_a_ruleset_with_bad_action_params_is_refused_at_load_time():
    text = ("ruleset: r\nstage: enforcement\nrules:\n  - id: g\n    description: x\n    when: node.load > 0.5\n"
            "    then:\n      - gate_feature: {features: 5}\n")
    with pytest.raises(RulesetError) as info:
        load_ruleset("r.yaml", text=text)
    assert str(info.value).startswith("r.yaml:8:") and "rules[0].then[0].gate_feature.features" in str(info.value)
    text = text.replace("gate_feature: {features: 5}", 'reduce_load: {target_load: "{node.load}"}')
    with pytest.raises(RulesetError, match="target_load must be a number >= 0; a template renders text"):
        load_ruleset("r.yaml", text=text)
    text = text.replace('reduce_load: {target_load: "{node.load}"}', "reduce_load: {moves: [n1]}")
    with pytest.raises(RulesetError, match="moves is set by the orchestrator"):
        load_ruleset("r.yaml", text=text)


# -- a hub's isolation ------------------------------------------------------------------------


def test_isolating_a_hub_that_would_strand_healthy_nodes_is_held_with_a_note(make_orchestrator, clock):
    orch = make_orchestrator(HUB)
    reports = run_ticks(orch, clock, 30, lambda t: "a" if 3 <= t <= 14 else "")
    assert not any(a.type == "isolate" for r in reports for a in r.actions)
    held = [r for r in reports if states(r, "isolate", "a")]
    assert states(held[0], "isolate", "a") == ["suppressed"]
    assert "would cut 3 healthy node(s) off from the orchestrator: b, c, d" in held[0].lifecycle[0]["detail"]
    notes = [n for r in reports for n in r.notes if n.startswith("strand hold")]
    assert notes and "a (would strand b, c, d)" in notes[0]
    assert not any(n.startswith("safety stop") for r in reports for n in r.notes)
    assert orch.mesh.partitions() == []


def test_partition_made_by_our_own_isolation_neither_stops_nor_blocks_its_release(make_orchestrator, clock):
    orch = make_orchestrator(HUB)

    # a, b, c, d go silent together: all four isolated (a strands only offline nodes);
    # b, c, d come back at tick 12 and are reinstated behind a, which stays away until 20
    def silent(t):
        return "abcd" if 3 <= t <= 11 else ("a" if 12 <= t <= 19 else "")

    reports = run_ticks(orch, clock, 30, silent)
    isolated = [(r.tick, a.target) for r in reports for a in r.actions if a.type == "isolate"]
    assert sorted(t for _, t in isolated) == ["a", "b", "c", "d"]
    stranded = [r for r in reports if any(n.startswith("stranded: 3 node(s)") for n in r.notes)]
    assert stranded, "b, c, d sat behind the isolated a"
    # 3 of 10 without a mesh path is more than max_partitioned_fraction (0.25), but it
    # is our own doing: no safety stop, and a's isolation is released when a is back
    assert not any(n.startswith("safety stop") for r in reports for n in r.notes)
    assert any(a.type == "reinstate" and a.target == "a" for r in reports for a in r.actions)
    assert not orch.registry["a"].isolated and orch.mesh.partitions() == []
    assert sorted(orch.mesh.neighbours("a")) == ["b", "c", "d", "orchestrator"]


def test_no_isolation_is_released_during_a_safety_stop(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(10))
    ids = [f"n{i:02d}" for i in range(1, 11)]
    beat(orch, clock, *ids)
    orch.tick()
    clock.advance(60)
    beat(orch, clock, *ids[1:])  # n01 silent: offline, isolated
    assert [a.target for a in orch.tick().actions if a.type == "isolate"] == ["n01"]
    clock.advance(60)
    beat(orch, clock, *ids[:4])  # n01 is back, but 6 of 10 others fell silent: safety stop
    report = orch.tick()
    assert any(n.startswith("safety stop") for n in report.notes)
    assert states(report, "isolate", "n01") == []  # not cleared on evidence we distrust
    assert orch.registry["n01"].isolated and any(h.action.target == "n01" for h in state_of(orch).in_force.values())
    clock.advance(5)
    beat(orch, clock, *ids)  # everyone back: the stop lifts, the isolation is released
    report = orch.tick()
    assert any(n.startswith("safety stop lifted") for n in report.notes)
    assert states(report, "isolate", "n01") == ["cleared"]


def test_a_correlated_failure_stops_isolation_before_anything_is_offline(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(20))
    ids = [f"n{i:02d}" for i in range(1, 21)]
    beat(orch, clock, *ids)
    orch.tick()
    reports = []
    for _ in range(12):  # 8 of 20 (40%, under max_unhealthy_fraction) fall silent at once
        clock.advance(5)
        beat(orch, clock, *ids[8:])
        reports.append(orch.tick())
    stale_at = next(i for i, r in enumerate(reports) if r.status_counts()["stale"] == 8)
    assert any("8/20 nodes (40%) went silent within 3 tick(s)" in n for n in reports[stale_at].notes)
    assert not any(a.type == "isolate" for r in reports for a in r.actions)
    assert reports[-1].status_counts()["offline"] == 8
    # one node at a time is not a correlated failure: the next silent node is isolated
    orch2 = make_orchestrator(cluster_yaml(20), sections={"decide": {"min_correlated_nodes": 9}})
    beat(orch2, clock, *ids)
    orch2.tick()
    clock.advance(60)
    beat(orch2, clock, *ids[8:])
    assert sum(a.type == "isolate" for a in orch2.tick().actions) == 8


# -- overload needs its run of ticks -------------------------------------------------------


def test_overload_must_last_overload_ticks_before_load_is_moved(make_orchestrator, clock):
    orch = make_orchestrator(HUB, sections={"healing": {"overload_ticks": 3}})
    loads = []
    for t in range(1, 8):
        hot = t not in (3,)  # one cool tick breaks the first run
        orch.intake.put_many(Heartbeat(i, clock(), 1.2 if (i == "a" and hot) else 0.2) for i in EVERYONE)
        report = orch.tick()
        loads.append([a.type for a in report.actions if a.target == "a"])
        clock.advance(5)
    # runs: ticks 1-2 (broken by 3), then 4, 5, 6: acted on in tick 6 only
    assert loads == [[], [], [], [], [], ["reduce_load"], []]
    [proposal] = [a for a in report.proposed if a.type == "reduce_load"] or [None]
    assert proposal is not None and "for 4 tick(s)" in proposal.reason


# -- restart: pending deliveries and effects are kept ------------------------------------------


class Revoke:
    @hookimpl
    def wyneos_enforcement(self, ctx):
        return [Action("revoke", "*", "L1 revoked", "test", params={"licence_id": "L1"})] if ctx.tick >= 2 else []


def test_pending_deliveries_and_effects_survive_a_restart(make_orchestrator, clock, tmp_path):
    path = tmp_path / "state.db"
    text = cluster_yaml(6)
    ids = [f"n{i:02d}" for i in range(1, 7)]
    sections = {"healing": {"isolate_offline": False}}
    orch = make_orchestrator(text, plugins=[Revoke()], store=StateStore.open(path), sections=sections)
    beat(orch, clock, *ids)
    orch.tick()
    clock.advance(60)
    beat(orch, clock, *[i for i in ids if i != "n04"])  # n04 is offline when the revoke goes out
    report = orch.tick()
    [rev] = [a for a in report.actions if a.type == "revoke"]
    assert [(d.delivered, d.reason) for d in report.deliveries if d.target == "n04"] == [(False, "offline")]
    orch.stop()

    store = StateStore.open(path)
    outcomes, carried = store.action_outcomes([rev.id])
    assert outcomes[rev.id]["n04"] == (False, "offline") and outcomes[rev.id]["n01"] == (True, "")
    assert carried[rev.id] == {"licence_id": "L1"}
    store.close()

    again = make_orchestrator(text, plugins=[Revoke()], store=StateStore.open(path), sections=sections)
    again.start()
    assert state_of(again).in_force[rev.id].pending == {"n04": "offline"}
    clock.advance(5)
    beat(again, clock, *ids)
    report = again.tick()
    assert states(report, "revoke") == ["redelivered"]
    assert [(d.target, d.delivered) for d in report.deliveries] == [("n04", True)]
    again.stop()
    store = StateStore.open(path)
    assert store.action_outcomes([rev.id])[0][rev.id]["n04"] == (True, "")
    store.close()


def test_load_moves_and_cut_edges_are_stored(make_orchestrator, clock, tmp_path):
    store = StateStore.open(tmp_path / "state.db")
    orch = make_orchestrator(HUB, store=store)
    orch.intake.put_many(Heartbeat(i, clock(), 1.2 if i == "a" else 0.2) for i in EVERYONE)
    report = orch.tick()
    [load] = [a for a in report.actions if a.type == "reduce_load"]
    effects = store.action_effects()
    assert effects[load.id]["carried"]["moves"] == {"b": 0.4}
    assert effects[load.id]["effect"]["moves"] == {"b": 0.4}
    clock.advance(60)
    orch.intake.put_many(Heartbeat(i, clock(), 0.2) for i in EVERYONE if i != "e")
    report = orch.tick()
    [iso] = [a for a in report.actions if a.type == "isolate"]
    assert store.action_effects()[iso.id]["effect"] == {"cut": ["orchestrator"]}


def test_an_action_in_force_without_stored_outcomes_is_carried_again_after_restart(make_orchestrator, clock,
                                                                                    tmp_path):
    path = tmp_path / "state.db"
    text = cluster_yaml(4)
    ids = [f"n{i:02d}" for i in range(1, 5)]
    orch = make_orchestrator(text, plugins=[Revoke()], store=StateStore.open(path))
    for _ in range(2):
        beat(orch, clock, *ids)
        orch.tick()
        clock.advance(5)
    orch.stop()
    store = StateStore.open(path)  # as if the orchestrator died between the two writes
    store.conn.execute("DELETE FROM action_targets")
    store.close()
    again = make_orchestrator(text, plugins=[Revoke()], store=StateStore.open(path))
    beat(again, clock, *ids)
    report = again.tick()
    assert states(report, "revoke") == ["redelivered"]
    assert sorted(d.target for d in report.deliveries if d.delivered) == ids
