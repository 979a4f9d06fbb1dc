"""Deterministic multi-tick scenarios on small clusters with a fake clock."""

from __future__ import annotations

import json
import time
from importlib import resources

import jsonschema
import pytest

from tests.conftest import beat, cluster_yaml
from wyneos_core import Action, LicenceResult, hookimpl
from wyneos_core.model import NodeStatus

REPORT_SCHEMA = json.loads((resources.files("wyneos_core") / "schemas" / "tick-report.schema.json").read_text())


def statuses(orch):
    return {n.id: n.status.value for n in orch.registry}


def test_steps_run_in_order_each_seeing_the_previous_output(make_orchestrator, clock):
    seen = []

    class Spy:
        @hookimpl
        def wyneos_licence_validate(self, nodes):
            seen.append(("licence", len(nodes)))
            return [LicenceResult(n.id, n.id != "n02", "ok" if n.id != "n02" else "expired") for n in nodes]

        @hookimpl
        def wyneos_governance(self, licences):
            seen.append(("governance", sorted(k for k, v in licences.items() if not v.valid)))

        @hookimpl
        def wyneos_enforcement(self, licences, results):
            seen.append(("enforcement", len(results), sum(results.passed_counts.values())))

        @hookimpl(tryfirst=True)
        def wyneos_decide(self, proposed):
            seen.append(("decide", sorted((a.type, a.target) for a in proposed)))

        @hookimpl(tryfirst=True)
        def wyneos_tick_report(self, report):
            seen.append(("report", [a.target for a in report.actions]))

    orch = make_orchestrator(cluster_yaml(3), plugins=[Spy()])
    beat(orch, clock, "n01", "n02", "n03")
    orch.tick()
    assert seen == [
        ("licence", 3),
        ("governance", ["n02"]),
        # 2 builtin rules x 3 nodes, all passing: counted, not listed (RuleResults)
        ("enforcement", 0, 6),
        ("decide", [("isolate", "n02")]),  # builtin enforcement: expired licence -> isolate
        ("report", ["n02"]),
    ]


def test_crash_is_detected_then_isolated_then_reinstated(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(5, topology="ring"), sections={"decide": {"probation_ticks": 1}})
    everyone = [f"n0{i}" for i in range(1, 6)]
    history = []
    for t in range(1, 21):
        alive = everyone if not (4 <= t <= 14) else [i for i in everyone if i != "n03"]
        beat(orch, clock, *alive)
        report = orch.tick()
        history.append((t, report))
        clock.advance(5)
        json.dumps(report.to_dict())

    status_of_n03 = {t: next(n.status.value for n in r.nodes if n.id == "n03") for t, r in history}
    # last heartbeat at t=3 (time 10s); stale after 15 s, offline after 40 s
    assert status_of_n03[3] == "online" and status_of_n03[6] == "online"
    assert status_of_n03[7] == "stale" and status_of_n03[11] == "stale"
    assert status_of_n03[12] == "offline"
    isolate = [(t, a) for t, r in history for a in r.actions if a.type == "isolate"]
    assert [(t, a.target) for t, a in isolate] == [(12, "n03")], "isolated once, not every tick"
    t12 = dict(history)[12]
    delivered = {d.target: d for d in t12.deliveries if d.action_id == isolate[0][1].id}
    assert set(delivered) == {"n02", "n03", "n04"}  # the target and its ring neighbours
    assert not delivered["n03"].delivered and delivered["n03"].reason == "offline"
    assert delivered["n02"].delivered and delivered["n02"].path[0] == "orchestrator"
    assert dict(history)[13].nodes[2].isolated is True
    # heartbeats resume at t=15: online again, isolation cleared, reinstated after probation
    assert status_of_n03[15] == "online"
    reinstated = [(t, a.target) for t, r in history for a in r.actions if a.type == "reinstate"]
    assert reinstated == [(16, "n03")]
    assert not orch.registry["n03"].isolated and orch.mesh.neighbours("n03")
    states = [e["state"] for t, r in history for e in r.lifecycle if e["target"] == "n03" and e["type"] == "isolate"]
    assert states == ["proposed", "approved", "propagated", "in_force", "cleared"]


def test_safety_stop_when_most_of_the_cluster_looks_down(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(10))
    ids = [f"n{i:02d}" for i in range(1, 11)]
    beat(orch, clock, *ids)
    orch.tick()
    clock.advance(60)
    beat(orch, clock, *ids[:4])  # 6 of 10 silent: more than 0.55
    report = orch.tick()
    assert sum(n.status is NodeStatus.OFFLINE for n in report.nodes) == 6
    assert [a for a in report.actions if a.type == "isolate"] == []
    assert any("safety stop" in n for n in report.notes)
    assert sum(1 for e in report.lifecycle if e["state"] == "suppressed") == 6


def test_isolation_rate_limit_defers_the_rest(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(10), sections={"decide": {"max_isolations_per_tick": 2}})
    ids = [f"n{i:02d}" for i in range(1, 11)]
    beat(orch, clock, *ids)
    orch.tick()
    clock.advance(60)
    beat(orch, clock, *ids[:6])  # 4 offline = 40 %, under the safety fraction
    counts = []
    for _ in range(3):
        report = orch.tick()
        counts.append(sum(a.type == "isolate" for a in report.actions))
        clock.advance(5)
        beat(orch, clock, *ids[:6])
    assert counts == [2, 2, 0]


def test_rejected_heartbeats_are_reported_and_change_nothing(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(2))
    beat(orch, clock, "n01")
    beat(orch, clock, "ghost")
    beat(orch, clock, "n02", load=-1)
    report = orch.tick()
    assert report.heartbeats_accepted == 1
    assert [(r["node_id"], r["field"]) for r in report.heartbeats_rejected] == [("ghost", "node_id"), ("n02", "load")]
    assert statuses(orch) == {"n01": "online", "n02": "unknown"}
    assert "ghost" not in orch.registry


def test_report_matches_its_published_schema(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(4, disable="[]"))  # licence step on: no source -> no_licence
    beat(orch, clock, "n01", "n02", "n03", load=0.95)
    beat(orch, clock, "nobody")
    report = orch.tick().to_dict()
    jsonschema.validate(report, REPORT_SCHEMA)
    assert report["licence_summary"] == {"no_licence": 4}
    assert report["rule_summary"]["load-threshold"] == {"passed": 1, "failed": 3}
    assert {r["rule_id"] for r in report["results"]} == {"load-threshold", "heartbeat-fresh"}
    assert report["status_counts"]["online"] == 3
    assert set(report["timings_ms"]) == {"heartbeat", "licence", "predict", "governance", "trust", "healing",
                                         "enforcement", "decide", "propagate", "report"}


def test_action_ids_are_stable_across_ticks():
    a = Action("isolate", "n1", "x", "healing", params={"k": 1})
    b = Action("isolate", "n1", "different reason", "healing", params={"k": 1})
    c = Action("isolate", "n1", "x", "healing", params={"k": 2})
    assert a.id == b.id != c.id


def test_revocation_reaches_every_reachable_node_and_reports_the_rest(make_orchestrator, clock):
    class Revoker:
        @hookimpl
        def wyneos_enforcement(self, ctx):
            if ctx.tick == 2:
                return [Action("revoke", "*", "licence L1 revoked", "test", params={"licence_id": "L1"})]

    orch = make_orchestrator(cluster_yaml(6, topology="ring"), plugins=[Revoker()])
    ids = [f"n0{i}" for i in range(1, 7)]
    beat(orch, clock, *ids)
    orch.tick()
    clock.advance(60)
    beat(orch, clock, *[i for i in ids if i != "n04"])
    report = orch.tick()
    d = {x.target: x for x in report.deliveries}
    assert set(d) == set(ids)
    assert not d["n04"].delivered and d["n04"].reason == "offline"
    assert all(d[i].delivered for i in ids if i != "n04")


def test_refusing_transport_marks_the_subtree_relay_failed(make_orchestrator, clock):
    class Flaky:
        calls = 0

        @hookimpl
        def wyneos_deliver(self, sender, receiver):
            Flaky.calls += 1
            return receiver != "n02"

    orch = make_orchestrator(
        "nodes: [{id: n01}, {id: n02}, {id: n03}]\n"
        "mesh: {topology: explicit, edges: [[orchestrator, n01], [n01, n02], [n02, n03]]}\n"
        "plugins: {disable: [licence], settings: {propagate: {retries: 2}}}\n",
        plugins=[Flaky()],
    )
    beat(orch, clock, "n01", "n02", "n03")
    orch.tick()

    class Revoker:
        @hookimpl
        def wyneos_enforcement(self):
            return [Action("revoke", "*", "r", "test")]

    orch.pm.register(Revoker(), "revoker")
    clock.advance(1)
    beat(orch, clock, "n01", "n02", "n03")
    report = orch.tick()
    d = {x.target: (x.delivered, x.reason) for x in report.deliveries}
    assert d == {"n01": (True, ""), "n02": (False, "relay_failed"), "n03": (False, "relay_failed")}
    assert Flaky.calls == 1 + 3  # n01 once, n02 tried 1 + 2 retries, n03 never


@pytest.mark.parametrize("bad", [None, "string", 42])
def test_decide_replacement_returning_garbage_is_recorded(make_orchestrator, clock, bad):
    class Bad:
        @hookimpl(tryfirst=True)
        def wyneos_decide(self):
            return bad

    orch = make_orchestrator(cluster_yaml(2), plugins=[Bad()])
    beat(orch, clock, "n01", "n02", load=0.99)
    report = orch.tick()
    if bad is None:  # None passes the decision on to the builtin
        assert {a.type for a in report.actions} == {"reduce_load"}
    else:
        assert report.actions == [] and report.errors[0].kind == "invalid_result"


def test_demo_reports_match_the_schema(tmp_path, monkeypatch):
    """Every plugin's contributions (rulesets, licences, healing...) keep the report valid."""
    from wyneos_core.config import load_config
    from wyneos_core.demo import demo_plugins
    from wyneos_core.tick import Orchestrator

    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    config["report"]["stdout"] = "none"
    now = [time.time()]  # the demo's licences are dated from the real clock
    with Orchestrator(config, clock=lambda: now[0], plugins=demo_plugins(config), load_entrypoints=False) as orch:
        kinds = set()
        for _ in range(8):
            report = orch.tick()
            jsonschema.validate(report.to_dict(), REPORT_SCHEMA)
            kinds.update(a.type for a in report.actions)
            now[0] += 1.0
    assert {"isolate", "quarantine", "degrade", "reduce_load"} <= kinds
