"""Healing and enforcement that act: lifecycle, effects, redelivery, limits, persistence."""

from __future__ import annotations

from tests.conftest import beat, cluster_yaml
from wyneos_core import Action, hookimpl
from wyneos_core.builtin.decide import state_of
from wyneos_core.store import StateStore

STAR = """
heartbeat: {interval: 5, stale_after: 15, offline_after: 40, max_clock_skew: 30}
plugins: {disable: [licence]}
mesh:
  topology: explicit
  edges: [[orchestrator, a], [a, b], [a, c], [a, d], [orchestrator, e]]
nodes: [{id: a}, {id: b}, {id: c}, {id: d}, {id: e}]
"""


def lifecycle(report, type_=None, target=None):
    return [e["state"] for e in report.lifecycle
            if (type_ is None or e["type"] == type_) and (target is None or e["target"] == target)]


def beat_loads(orch, clock, loads):
    from wyneos_core.model import Heartbeat

    orch.intake.put_many(Heartbeat(i, clock(), load) for i, load in loads.items())


def test_overload_moves_excess_to_neighbours_with_spare_capacity(make_orchestrator, clock):
    orch = make_orchestrator(STAR)
    beat_loads(orch, clock, {"a": 1.2, "b": 0.3, "c": 0.7, "d": 0.5, "e": 0.1})
    report = orch.tick()
    [action] = [x for x in report.actions if x.type == "reduce_load"]
    assert action.target == "a" and action.params == {"target_load": 0.8}
    [effect] = [e["effect"] for e in report.lifecycle if e["state"] == "in_force" and e["action_id"] == action.id]
    # excess 0.4: b has 0.45 of room (up to 0.75), d 0.25, c 0.05 - the most spare first
    assert effect["moves"] == {"b": 0.4} and effect["unplaced"] == 0.0
    told = {d.target for d in report.deliveries if d.action_id == action.id and d.delivered}
    assert told == {"a", "b"}  # the source and the neighbour taking its load
    assert lifecycle(report, "reduce_load") == ["proposed", "approved", "propagated", "in_force"]
    # still overloaded next tick: in force, not issued again
    clock.advance(5)
    beat_loads(orch, clock, {"a": 1.2, "b": 0.3, "c": 0.7, "d": 0.5, "e": 0.1})
    assert not [x for x in orch.tick().actions if x.type == "reduce_load"]
    # load back to normal: cleared
    clock.advance(5)
    beat_loads(orch, clock, {"a": 0.5, "b": 0.7, "c": 0.7, "d": 0.5, "e": 0.1})
    assert lifecycle(orch.tick(), "reduce_load") == ["cleared"]


def test_overload_without_spare_capacity_is_reported(make_orchestrator, clock):
    orch = make_orchestrator(STAR)
    beat_loads(orch, clock, {"a": 1.5, "b": 0.74, "c": 0.8, "d": 0.7, "e": 0.1})
    report = orch.tick()
    [effect] = [e["effect"] for e in report.lifecycle if e["state"] == "in_force" and e["type"] == "reduce_load"]
    assert effect["moves"] == {"b": 0.01, "d": 0.05}
    assert abs(effect["unplaced"] - 0.64) < 1e-6
    assert any(n.startswith("no spare capacity: load left on a (0.640)") for n in report.notes)


def test_redistribute_drains_a_node_and_skips_unhealthy_neighbours(make_orchestrator, clock):
    class Drain:
        @hookimpl
        def wyneos_healing(self, ctx):
            return [Action("redistribute", "a", "drain for maintenance", "test")] if ctx.tick == 2 else []

    orch = make_orchestrator(STAR, plugins=[Drain()])
    beat_loads(orch, clock, {"a": 0.6, "b": 0.2, "c": 0.2, "d": 0.2, "e": 0.1})
    orch.tick()
    clock.advance(45)  # d falls silent: offline, must not receive load
    beat_loads(orch, clock, {"a": 0.6, "b": 0.2, "c": 0.2, "e": 0.1})
    report = orch.tick()
    [effect] = [e["effect"] for e in report.lifecycle if e["state"] == "in_force" and e["type"] == "redistribute"]
    assert set(effect["moves"]) == {"b", "c"} and abs(effect["moved"] - 0.6) < 1e-9


def test_quarantine_and_gate_feature_restrict_the_node_until_cleared(make_orchestrator, clock):
    class Enforcer:
        @hookimpl
        def wyneos_enforcement(self, ctx):
            if ctx.tick > 3:
                return []
            return [Action("quarantine", "n02", "suspicious", "test"),
                    Action("gate_feature", "n03", "not entitled", "test", params={"features": ["export"]})]

    orch = make_orchestrator(cluster_yaml(4), plugins=[Enforcer()])
    ids = ["n01", "n02", "n03", "n04"]
    history = []
    for _ in range(5):
        beat(orch, clock, *ids)
        orch.intake.put_many([])
        history.append(orch.tick())
        clock.advance(5)
        # a node cannot lift (or claim) restrictions through its own heartbeat metadata
        beat(orch, clock, "n02", restrictions={})
    nodes = {n.id: n for n in history[0].nodes}
    assert nodes["n02"].metadata["restrictions"] == {"quarantined": "suspicious"}
    assert nodes["n03"].metadata["restrictions"] == {"gated_features": ["export"]}
    assert "restrictions" not in nodes["n01"].metadata
    assert {n.id: n for n in history[2].nodes}["n02"].metadata["restrictions"] == {"quarantined": "suspicious"}
    last = {n.id: n for n in history[4].nodes}
    assert "restrictions" not in last["n02"].metadata and "restrictions" not in last["n03"].metadata
    assert lifecycle(history[3], "quarantine") == ["cleared"]
    # earlier reports keep what was true then (metadata replaced, not mutated)
    assert {n.id: n for n in history[0].nodes}["n02"].metadata["restrictions"]


def test_unacknowledged_targets_are_redelivered_when_they_answer(make_orchestrator, clock):
    class Flaky:
        def __init__(self):
            self.calls = []

        @hookimpl(tryfirst=True)
        def wyneos_deliver(self, ctx, action, sender, receiver):
            self.calls.append((ctx.tick, receiver))
            return not (receiver == "n03" and ctx.tick <= 2)

    class Quarantine:
        @hookimpl
        def wyneos_enforcement(self, ctx):
            return [Action("quarantine", "n03", "test", "test")]

    flaky = Flaky()
    orch = make_orchestrator(cluster_yaml(5), plugins=[flaky, Quarantine()])
    ids = [f"n0{i}" for i in range(1, 6)]
    reports = []
    for _ in range(3):
        beat(orch, clock, *ids)
        reports.append(orch.tick())
        clock.advance(5)
    first = [d for d in reports[0].deliveries if d.target == "n03"]
    assert len(first) == 1 and not first[0].delivered and first[0].reason == "relay_failed"
    assert flaky.calls.count((1, "n03")) == 3  # one try and propagate.retries=2 retries
    [held] = state_of(orch).in_force.values()
    assert held.pending == {}
    assert lifecycle(reports[1], "quarantine") == ["redelivered"]  # still refused in tick 2
    assert lifecycle(reports[2], "quarantine") == ["redelivered"]
    assert [d.delivered for d in reports[2].deliveries if d.target == "n03"] == [True]


def test_small_partition_is_reported_and_its_nodes_not_isolated(make_orchestrator, clock):
    orch = make_orchestrator(STAR)
    everyone = ["a", "b", "c", "d", "e"]
    beat(orch, clock, *everyone)
    orch.tick()
    orch.mesh.graph.remove_edge("orchestrator", "e")  # link-state: e lost its only link
    clock.advance(45)
    beat(orch, clock, "a", "b", "c", "d")
    report = orch.tick()
    assert report.partitions == [["e"]]
    assert not [a for a in report.actions if a.type == "isolate"]
    assert lifecycle(report, "isolate", "e") == ["suppressed"]
    assert any("partition hold" in n for n in report.notes)
    assert not any(n.startswith("safety stop") for n in report.notes)  # 1 of 5 is below both limits


def test_keep_firing_holds_an_action_for_a_while_after_its_cause(make_orchestrator, clock):
    class Sometimes:
        @hookimpl
        def wyneos_enforcement(self, ctx):
            return [Action("quarantine", "n01", "x", "test")] if ctx.tick in (1, 3) else []

    orch = make_orchestrator(cluster_yaml(3), plugins=[Sometimes()], sections={"decide": {"keep_firing_ticks": 2}})
    states = []
    for _ in range(6):
        beat(orch, clock, "n01", "n02", "n03")
        states.append(lifecycle(orch.tick(), "quarantine"))
        clock.advance(5)
    # proposed in ticks 1 and 3: one lifecycle, cleared only after 2 quiet ticks (tick 6)
    assert states[0][:2] == ["proposed", "approved"] and states[1:5] == [[], [], [], []]
    assert states[5] == ["cleared"]


def _flap(make_orchestrator, clock, decide):
    orch = make_orchestrator(cluster_yaml(4), sections={"decide": decide})
    ids = ["n01", "n02", "n03", "n04"]
    cuts = []
    for t in range(1, 81):
        down = (t % 14) >= 4  # 10 ticks silent, 4 ticks back, again and again
        beat(orch, clock, *[i for i in ids if not (i == "n02" and down)])
        report = orch.tick()
        cuts += [(t, a.type) for a in report.actions if a.type in ("isolate", "reinstate") and a.target == "n02"]
        clock.advance(5)
    return orch, cuts


def test_flapping_node_is_not_isolated_and_reinstated_over_and_over(make_orchestrator, clock):
    orch, damped = _flap(make_orchestrator, clock, {"probation_ticks": 2})
    # probation 2, then 4, then 8 ticks: longer than the 4 ticks it stays up
    assert [kind for _, kind in damped] == ["isolate", "reinstate", "isolate", "reinstate", "isolate"]
    assert all(b - a >= 3 for (a, _), (b, _) in zip(damped, damped[1:]))
    assert orch.registry["n02"].isolated  # held out for good while it keeps flapping
    # without the doubling (probation capped at 2) it would cycle on every flap
    _, undamped = _flap(make_orchestrator, clock, {"probation_ticks": 2, "max_probation_ticks": 2})
    assert len(undamped) >= 10 and len(undamped) > 2 * len(damped) - 1


def test_lifecycle_is_persisted_and_survives_a_restart(make_orchestrator, clock, tmp_path):
    path = tmp_path / "state.db"
    orch = make_orchestrator(cluster_yaml(5), store=StateStore.open(path))
    ids = [f"n0{i}" for i in range(1, 6)]
    for _ in range(12):
        beat(orch, clock, *[i for i in ids if i != "n03"])
        orch.tick()
        clock.advance(5)
    assert orch.registry["n03"].isolated and orch.mesh.is_isolated("n03")
    orch.stop()
    store = StateStore.open(path)
    rows = {r["id"]: r for r in store.actions()}
    [iso] = [r for r in rows.values() if r["type"] == "isolate"]
    assert iso["state"] == "in_force" and iso["target"] == "n03"
    states = [e["state"] for e in store.action_events() if e["action_id"] == iso["id"]]
    assert states == ["proposed", "approved", "propagated", "in_force"]
    store.close()

    again = make_orchestrator(cluster_yaml(5), store=StateStore.open(path))
    again.start()
    assert again.mesh.is_isolated("n03")  # edges cut again on startup
    assert iso["id"] in state_of(again).in_force
    for _ in range(5):  # n03 is back: cleared, probation, reinstated
        beat(again, clock, *ids)
        again.tick()
        clock.advance(5)
    assert not again.registry["n03"].isolated and again.mesh.neighbours("n03")
    again.stop()
    store = StateStore.open(path)
    states = [e["state"] for e in store.action_events() if e["action_id"] == iso["id"]]
    assert states[-1] == "cleared"
    assert any(r["type"] == "reinstate" for r in store.actions())
    store.close()


def test_ids_worked_out_for_many_targets_are_those_of_each_action():
    """``action_ids`` (healing's ids in one pass) gives each target the id ``Action`` works
    out on its own: the ids of actions in force stay the same from one release to the next."""
    from wyneos_core.model import ActionType, action_id, action_ids

    targets = ["n01", "node-000042", "zone.a:host_1", "é-ünicode", 'quote"and\\back', "\ud800lone", "*"]
    for type_, origin, params in [(ActionType.ISOLATE, "healing", {}),
                                  ("reduce_load", "healing", {"target_load": 0.7}),
                                  ("reduce_load", "healing", {"target_load": 1}),
                                  ("quarantine", "rule:x", {"b": [1, 2.5, None], "a": {"z": "é", "y": True}}),
                                  ("gate_feature", "trust", {"features": ("x", "y"), "when": object})]:
        got = action_ids(type_, targets, origin, params)
        want = [Action(type_, t, "why", origin, params=params).id for t in targets]
        assert got == want
        assert want == [action_id(getattr(type_, "value", type_), t, origin, params) for t in targets]
    assert len(set(action_ids("isolate", targets, "healing", {}))) == len(targets)
