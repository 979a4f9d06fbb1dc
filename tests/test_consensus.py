"""Consensus before severe actions: witnesses confirm a silent node before it is isolated."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest

from tests.conftest import cluster_yaml
from wyneos_core.consensus import ConsensusSettings, ConsensusState, suspicion_timeout
from wyneos_core.model import Action, Heartbeat, Node, NodeStatus, Observation
from wyneos_core.registry import HeartbeatError, Registry

REPORT_SCHEMA = json.loads((resources.files("wyneos_core") / "schemas" / "tick-report.schema.json").read_text())
RING = [f"n{i:02d}" for i in range(1, 7)]


def neighbours(node: str) -> list[str]:
    i = RING.index(node)
    return [RING[i - 1], RING[(i + 1) % len(RING)]]


def run(orch, clock, ticks: int, *, silent=(), down=(), liars=(), quiet=(), start: int = 1):
    """Tick the 6-node ring; ``silent`` nodes send no heartbeat to the orchestrator,
    ``down`` nodes are dead (no heartbeat, peers cannot reach them), ``liars`` invert
    what they see, ``quiet`` nodes send heartbeats without observations."""
    reports = []
    for t in range(start, start + ticks):
        beats = []
        for node in RING:
            if node in silent or node in down:
                continue
            obs = ()
            if node not in quiet:
                obs = tuple(Observation(node, peer, (peer not in down) != (node in liars), 1.5, t, True)
                            for peer in neighbours(node))
            beats.append(Heartbeat(node, clock(), 0.3, {}, observations=obs))
        orch.intake.put_many(beats)
        report = orch.tick()
        jsonschema.validate(json.loads(json.dumps(report.to_dict())), REPORT_SCHEMA)
        reports.append(report)
        clock.advance(5)
    return reports


def isolations(reports):
    return [(r.tick, a.target) for r in reports for a in r.actions if a.type == "isolate"]


def test_lifeguard_timeout_shrinks_with_confirmations():
    values = [suspicion_timeout(c, 3, 2, 20) for c in range(5)]
    assert values[0] == 20 and values[3] == 2 and values[4] == 2
    assert all(a > b for a, b in zip(values[:4], values[1:4]))
    # the first confirmation shortens it most (logarithmic)
    assert values[0] - values[1] > values[1] - values[2] > values[2] - values[3]
    assert suspicion_timeout(1, 2, 5, 5) == 5


def test_silent_node_its_peers_still_reach_is_not_isolated(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(6))
    reports = run(orch, clock, 20, silent={"n03"})
    assert isolations(reports) == []
    node = orch.registry["n03"]
    assert node.status is NodeStatus.OFFLINE and not node.isolated
    held = [e for r in reports for e in r.lifecycle if e["state"] == "awaiting_witnesses"]
    assert [e["target"] for e in held] == ["n03"], "held, and said so once"
    last = reports[-1].consensus
    entry = next(a for a in last["actions"] if a["target"] == "n03")
    assert entry["approved"] is False and entry["basis"] == "refuted"
    assert entry["refuted_by"] == ["n02", "n04"] and entry["witnesses"] == []
    assert last["waiting"] == 1 and last["suspects"] == 1


def test_crash_confirmed_by_two_witnesses_is_isolated_when_offline(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(6))
    reports = run(orch, clock, 3)
    reports += run(orch, clock, 12, down={"n03"}, start=4)
    # last heartbeat at tick 3; offline (40 s) at tick 12: isolated in that very tick
    assert isolations(reports) == [(12, "n03")]
    t12 = reports[11]
    approved = next(e for e in t12.lifecycle if e["state"] == "approved" and e["target"] == "n03")
    assert approved["witnesses"] == ["n02", "n04"]
    assert approved["detail"].startswith("confirmed:")
    entry = next(a for a in t12.consensus["actions"] if a["target"] == "n03")
    assert entry["basis"] == "confirmed" and entry["confirmations"] == 2 and entry["silent_since_tick"] == 7


def test_one_witness_is_not_enough_when_another_vouches(make_orchestrator, clock):
    # n02 lies: n03 is merely cut off from the orchestrator, n02 says it is down, n04 says it is up
    orch = make_orchestrator(cluster_yaml(6), sections={"consensus": {"min_contradictions": 100}})
    reports = run(orch, clock, 20, silent={"n03"}, liars={"n02"})
    assert isolations(reports) == []
    entry = next(a for a in reports[-1].consensus["actions"] if a["target"] == "n03")
    assert entry["witnesses"] == ["n02"] and entry["refuted_by"] == ["n04"] and not entry["approved"]


def test_liar_is_discounted_and_cannot_isolate_a_healthy_node(make_orchestrator, clock):
    # n02 and n04 both lie about n03 (cut off from the orchestrator only): 2 confirmations
    # against 0 refutations - but both also call n01 and n05, which the orchestrator hears, down
    orch = make_orchestrator(cluster_yaml(6))
    reports = run(orch, clock, 20, silent={"n03"}, liars={"n02", "n04"})
    assert isolations(reports) == []
    assert set(reports[-1].consensus["discounted_witnesses"]) == {"n02", "n04"}
    # without the discount the same liars would have had their way
    orch2 = make_orchestrator(cluster_yaml(6), sections={"consensus": {"min_contradictions": 100}})
    reports2 = run(orch2, clock, 20, silent={"n03"}, liars={"n02", "n04"})
    assert [t for t, n in isolations(reports2) if n == "n03"], "control: undiscounted liars confirm"


def test_suspects_own_reports_and_isolated_observers_do_not_count():
    state = ConsensusState(ConsensusSettings())
    reg = Registry({"stale_after": 15, "offline_after": 40, "max_clock_skew": 30, "unknown_nodes": "reject",
                    "max_metadata_bytes": 8192, "max_load": 64})
    for n in ("a", "b", "c", "d", "e"):
        reg.register(n, now=0.0)
    reg["a"].status = NodeStatus.OFFLINE
    reg["c"].isolated = True
    obs = [Observation("a", "a", False), Observation("b", "a", False), Observation("c", "a", False)]
    state.update(10, 100.0, obs, reg, {"a": 8}, 5.0)
    verdict = state.verdict(Action("isolate", "a", "offline", "healing"), reg["a"], len(reg), 4)
    assert not verdict.approved and verdict.witnesses == ["b"]
    assert state.summary()["ignored"] == 1
    state.update(11, 105.0, [Observation("d", "a", False)], reg, {"a": 8}, 5.0)
    verdict = state.verdict(Action("isolate", "a", "offline", "healing"), reg["a"], len(reg), 4)
    assert verdict.approved and verdict.basis == "confirmed" and verdict.witnesses == ["b", "d"]
    # reports expire after the window
    state.update(14, 120.0, [Observation("e", "a", True)], reg, {"a": 8}, 5.0)
    verdict = state.verdict(Action("isolate", "a", "offline", "healing"), reg["a"], len(reg), 4)
    assert not verdict.approved and verdict.basis == "refuted"
    assert verdict.witnesses == [] and verdict.refuted_by == ["e"]


def test_small_cluster_needs_no_witnesses(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(3))
    reports = []
    for t in range(1, 15):
        alive = ["n01", "n02"] if t > 3 else ["n01", "n02", "n03"]
        beats = [Heartbeat(n, clock(), 0.3, {}, observations=tuple(
            Observation(n, p, True) for p in ("n01", "n02", "n03") if p != n)) for n in alive]
        orch.intake.put_many(beats)
        reports.append(orch.tick())
        clock.advance(5)
    assert isolations(reports) == [(12, "n03")]
    entry = next(a for a in reports[11].consensus["actions"] if a["target"] == "n03")
    assert entry["basis"] == "small_cluster" and entry["approved"]


def test_without_any_witness_reports_the_orchestrators_evidence_stands(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(6))
    reports = run(orch, clock, 3, quiet=set(RING))
    reports += run(orch, clock, 12, down={"n03"}, quiet=set(RING), start=4)
    assert isolations(reports) == [(12, "n03")]
    assert reports[11].consensus["actions"][0]["basis"] == "no_witnesses"


def test_crash_only_one_witness_can_vouch_for_stays_held(make_orchestrator, clock):
    # n02 sends no observations: only n04 can speak for n03; a late isolation beats a false one
    orch = make_orchestrator(cluster_yaml(6))
    reports = run(orch, clock, 3, quiet={"n02"})
    reports += run(orch, clock, 20, down={"n03"}, quiet={"n02"}, start=4)
    assert isolations(reports) == []
    entry = next(a for a in reports[-1].consensus["actions"] if a["target"] == "n03")
    assert entry["basis"] == "waiting" and entry["witnesses"] == ["n04"] and entry["needed"] == 2
    assert "waits for 2 confirmation(s), has 1" in entry["detail"]


def test_node_with_fewer_than_k_neighbours_needs_all_of_them_and_waits_longer(make_orchestrator, clock):
    # a line n01 - n02 - ... - n06: n01 has one neighbour; orchestrator linked to n01 and n04
    edges = "[[orchestrator, n01], [orchestrator, n04]" + "".join(
        f", [n0{i}, n0{i + 1}]" for i in range(1, 6)) + "]"
    text = cluster_yaml(6).replace("mesh: {topology: ring, origin_links: 2, seed: 1}",
                                   f"mesh: {{topology: explicit, edges: {edges}}}")
    orch = make_orchestrator(text, sections={"consensus": {"max_timeout_ticks": 16}})
    line = {"n01": ["n02"], "n02": ["n01", "n03"], "n03": ["n02", "n04"], "n04": ["n03", "n05"],
            "n05": ["n04", "n06"], "n06": ["n05"]}
    reports = []
    for t in range(1, 21):
        beats = [Heartbeat(n, clock(), 0.3, {}, observations=tuple(
            Observation(n, p, p != "n01" or t <= 3) for p in line[n])) for n in RING if n != "n01" or t <= 3]
        orch.intake.put_many(beats)
        reports.append(orch.tick())
        clock.advance(5)
    # silent from tick 7 (stale), offline at 12; one confirmation of the one needed, timeout
    # 16 - 16*log2/log3 = 5.9 ticks after tick 7: isolated at 13, not 12
    assert isolations(reports) == [(13, "n01")]
    approved = next(e for r in reports for e in r.lifecycle if e["state"] == "approved")
    assert approved["detail"].startswith("few_neighbours:") and approved["witnesses"] == ["n02"]


def test_consensus_off_or_light_actions_do_not_wait(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(6), sections={"consensus": {"enabled": False}})
    reports = run(orch, clock, 14, silent={"n03"})
    # never heard: offline once 40 s past its registration, at tick 10
    assert isolations(reports) == [(10, "n03")]
    orch2 = make_orchestrator(cluster_yaml(6), sections={"consensus": {"severe_actions": ["revoke"]}})
    assert isolations(run(orch2, clock, 14, silent={"n03"})) == [(10, "n03")]
    state = ConsensusState(ConsensusSettings())
    assert not state.gates(Action("reduce_load", "n01", "hot", "healing"))
    assert state.gates(Action("revoke", "*", "forged", "enforcement", params={"licence_id": "x"}))


def test_observations_are_checked_on_intake():
    reg = Registry({"stale_after": 15, "offline_after": 40, "max_clock_skew": 30, "unknown_nodes": "reject",
                    "max_metadata_bytes": 8192, "max_load": 64, "max_observations": 2})
    for n in ("a", "b", "c"):
        reg.register(n, now=0.0)
    bad = [
        ((Observation("b", "c", False),), "observations[0].observer"),
        ((Observation("a", "b", True), Observation("a", "c", True), Observation("a", "b", True)), "observations"),
        ((Observation("a", "b", "yes"),), "observations[0]"),  # type: ignore[arg-type]
        ((Observation("a", "b", True, float("nan")),), "observations[0]"),
        ((Observation("a", "b", True, 1.0, -1),), "observations[0]"),
        (("a says b is fine",), "observations[0]"),
    ]
    for observations, field in bad:
        with pytest.raises(HeartbeatError) as info:
            reg.accept(Heartbeat("a", 1.0, observations=observations), 1.0)  # type: ignore[arg-type]
        assert info.value.field == field
        assert reg["a"].last_seen is None and reg.take_observations() == []
    reg.accept(Heartbeat("a", 1.0, observations=(Observation("a", "b", True, 0.4, 7, True),)), 1.0)
    assert [o.subject for o in reg.take_observations()] == ["b"]
    assert reg.take_observations() == []


def test_witness_weights_from_scratch_multiply(make_orchestrator, clock):
    from wyneos_core import hookimpl

    class Trust:
        @hookimpl
        def wyneos_enforcement(self, ctx):
            ctx.scratch["witness_weights"] = {"n02": 0.5}

    orch = make_orchestrator(cluster_yaml(6), plugins=[Trust()])
    reports = run(orch, clock, 3)
    reports += run(orch, clock, 20, down={"n03"}, start=4)
    # a half-trusted witness and a full one weigh 1.5: short of k=2
    assert isolations(reports) == []
    entry = next(a for a in reports[-1].consensus["actions"] if a["target"] == "n03")
    assert entry["confirmations"] == 1.5 and entry["needed"] == 2 and entry["witnesses"] == ["n02", "n04"]


def test_node_model_unchanged_for_plain_heartbeats():
    hb = Heartbeat("a", 1.0)
    assert "observations" not in hb.to_dict()
    assert Node("a").to_dict()["id"] == "a"


def test_node_heard_but_refused_is_judged_on_what_it_sends(make_orchestrator, clock):
    # n03's clock runs 120 s ahead: its heartbeats arrive and are refused; its peers reach it
    orch = make_orchestrator(cluster_yaml(6))
    reports = []
    for t in range(1, 16):
        beats = []
        for node in RING:
            obs = tuple(Observation(node, p, True) for p in neighbours(node))
            ts = clock() + (120.0 if node == "n03" and t > 3 else 0.0)
            beats.append(Heartbeat(node, ts, 0.3, {}, observations=obs))
        orch.intake.put_many(beats)
        reports.append(orch.tick())
        clock.advance(5)
    assert isolations(reports) == [(12, "n03")]
    entry = next(a for a in reports[11].consensus["actions"] if a["target"] == "n03")
    assert entry["basis"] == "direct" and "refused" in entry["detail"]


def test_after_a_restart_severe_actions_wait_for_the_first_witness_reports():
    reg = Registry({"stale_after": 15, "offline_after": 40, "max_clock_skew": 30, "unknown_nodes": "reject",
                    "max_metadata_bytes": 8192, "max_load": 64})
    for n in ("a", "b", "c", "d", "e"):
        reg.register(n, now=0.0)
    reg["a"].status = NodeStatus.OFFLINE
    act = Action("isolate", "a", "offline", "healing")
    state = ConsensusState(ConsensusSettings())  # a fresh process, first tick 500: nothing heard yet
    state.update(500, 5000.0, [], reg, {"a": 480}, 5.0)
    held = state.verdict(act, reg["a"], len(reg), 2)
    assert not held.approved and "since this orchestrator started" in held.detail
    # the witnesses speak: the cut-off node is vouched for, not isolated on stale evidence
    state.update(501, 5005.0, [Observation("b", "a", True), Observation("e", "a", True)], reg, {"a": 480}, 5.0)
    assert state.verdict(act, reg["a"], len(reg), 2).basis == "refuted"
    # a cluster whose nodes never report anything falls back once the start grace is over
    quiet = ConsensusState(ConsensusSettings())
    for t in range(500, 504):
        quiet.update(t, 5000.0 + t, [], reg, {"a": 480}, 5.0)
    assert quiet.verdict(act, reg["a"], len(reg), 2).basis == "no_witnesses"
    # a node without mesh neighbours never waits
    fresh = ConsensusState(ConsensusSettings())
    fresh.update(500, 5000.0, [], reg, {"a": 480}, 5.0)
    assert fresh.verdict(act, reg["a"], len(reg), 0).basis == "no_neighbours"


def test_explain_and_the_report_say_an_isolation_awaits_witnesses(make_orchestrator, clock):
    from wyneos_core.builtin.report import _verbose_lines
    from wyneos_core.explain import explain_actions

    orch = make_orchestrator(cluster_yaml(6))
    reports = run(orch, clock, 12, silent={"n03"})
    events = [e for r in reports for e in r.lifecycle]
    proposed = {a.id: a.to_dict() for a in reports[-1].proposed}
    [entry] = explain_actions(orch, "n03", None, events, proposed)
    assert entry["status"] == "awaiting_witnesses" and "still reach it" in entry["detail"]
    held_tick = next(r for r in reports if any(e["state"] == "awaiting_witnesses" for e in r.lifecycle))
    assert any("awaiting_witnesses isolate n03: " in line for line in _verbose_lines(held_tick, None))
