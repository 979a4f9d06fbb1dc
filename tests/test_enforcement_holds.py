"""Exceptions and disruption budgets hold actions back, say which, and let go when they
should: an expired exception stops applying; a zone outage is held by its budget; held
actions are released in order as room returns."""

from __future__ import annotations

import pytest
from enforcement_helpers import hot

from tests.conftest import beat, cluster_yaml, config_from
from wyneos_core.config import ConfigError

START = 1_700_000_000.0  # the fake clock's start


def hot_cluster(make_orchestrator, tmp_path, monkeypatch, n, extra):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hot.yaml").write_text(hot())
    return make_orchestrator(cluster_yaml(n, topology="star", disable="[governance, healing, enforcement]",
                                          extra="rulesets: {paths: [hot.yaml]}\n"
                                                "decide: {max_isolations_per_tick: 100}\n" + extra))


def approved(report):
    return sorted(e["target"] for e in report.lifecycle if e["state"] == "approved" and e["type"] == "isolate")


def test_an_exception_holds_until_it_expires_then_stops_applying(make_orchestrator, clock, tmp_path, monkeypatch):
    orch = hot_cluster(make_orchestrator, tmp_path, monkeypatch, 3, f"""
enforcement:
  exceptions:
    - {{id: n01-migration, owner: ops@example.com, reason: migrating n01, node: n01, expires: {START + 12}}}
""")
    beat(orch, clock, "n01", "n02", "n03", load=0.95)
    first = orch.tick()
    assert approved(first) == ["n02", "n03"]
    (held,) = [e for e in first.lifecycle if e["state"] == "excepted"]
    assert held["target"] == "n01" and held["exception"] == "n01-migration"
    assert "owner ops@example.com" in held["detail"] and "migrating n01" in held["detail"]
    assert first.enforcement["excepted"][0]["exception"] == "n01-migration"
    clock.advance(5)
    beat(orch, clock, "n01", "n02", "n03", load=0.95)
    second = orch.tick()
    assert approved(second) == [] and not [e for e in second.lifecycle if e["state"] == "excepted"]  # said once
    clock.advance(10)  # past the expiry
    beat(orch, clock, "n01", "n02", "n03", load=0.95)
    third = orch.tick()
    assert approved(third) == ["n01"]
    assert third.enforcement["exceptions_expired"][0]["id"] == "n01-migration"
    assert any("exception n01-migration (owner ops@example.com) expired" in n for n in third.notes)


def test_exceptions_cover_by_selector_rule_action_and_licence_reason():
    from wyneos_core.enforcement.exceptions import PolicyException
    from wyneos_core.model import Action, Node

    def covers(spec, action, node):
        return PolicyException.parse({"owner": "o", "reason": "r", "expires": "2030-01-01T00:00:00Z", **spec}
                                     ).covers(action, node)

    a = Action("isolate", "x", "r", "ruleset:hot/isolate-hot", params={"licence_reason": "expired"})
    eu, us = Node("x", metadata={"zone": "eu"}), Node("x", metadata={"zone": "us"})
    assert covers({"selector": {"zone": "eu"}}, a, eu) and not covers({"selector": {"zone": "eu"}}, a, us)
    assert covers({"rule": "hot/isolate-hot"}, a, eu) and covers({"rule": "isolate-hot"}, a, eu)
    assert not covers({"rule": "other"}, a, eu)
    assert covers({"action": "isolate", "licence_reason": "expired"}, a, eu)
    assert not covers({"action": "isolate", "licence_reason": "revoked"}, a, eu)


@pytest.mark.parametrize(("entry", "field", "why"), [
    ("{owner: o, reason: r, node: n01}", "enforcement.exceptions[0]", "expires"),
    ("{owner: o, reason: r, expires: soon, node: n01}", "enforcement.exceptions[0].expires", "not an ISO 8601 time"),
    ("{owner: o, reason: r, expires: '2030-01-01T00:00:00Z'}", "enforcement.exceptions[0]", "covers nothing"),
])
def test_a_bad_exception_is_refused_naming_the_field(entry, field, why):
    with pytest.raises(ConfigError) as info:
        config_from(cluster_yaml(1) + f"enforcement: {{exceptions: [{entry}]}}\n")
    assert info.value.field == field and why in info.value.reason


def test_a_budget_that_limits_nothing_is_refused():
    with pytest.raises(ConfigError) as info:
        config_from(cluster_yaml(1) + "enforcement: {budgets: [{per: zone}]}\n")
    assert info.value.field == "enforcement.budgets[0]" and "limits nothing" in info.value.reason


OUTAGE = """
heartbeat: {interval: 5, stale_after: 15, offline_after: 40, max_clock_skew: 30}
mesh: {topology: star}
rulesets: {paths: ["builtin:healing"]}
plugins: {disable: [governance, healing, enforcement, licence]}
decide: {max_unhealthy_fraction: 1.0, max_correlated_fraction: 1.0, max_isolations_per_tick: 100}
enforcement:
  budgets:
    - {name: zones, per: zone, max_disrupted: 40%, unhealthy_threshold: 0.55}
nodes:
""" + "".join(f"  - {{id: {z}{i}, metadata: {{zone: {z}}}}}\n" for z in "ab" for i in range(1, 6))


def test_a_zone_outage_is_held_by_its_budget_while_a_lone_failure_elsewhere_is_isolated(make_orchestrator, clock):
    orch = make_orchestrator(OUTAGE)
    alive = [f"{z}{i}" for z in "ab" for i in range(1, 6)]
    for _ in range(2):
        beat(orch, clock, *alive)
        orch.tick()
        clock.advance(5)
    alive = [n for n in alive if not n.startswith("a") and n != "b5"]  # zone a goes dark, and b5 alone
    reports = []
    for _ in range(12):
        beat(orch, clock, *alive)
        reports.append(orch.tick())
        clock.advance(5)
    isolated = sorted(n.id for n in orch.registry if n.isolated)
    assert isolated == ["b5"]
    held = {e["target"]: e for r in reports for e in r.lifecycle if e["state"] == "held_by_budget"}
    assert sorted(held) == ["a1", "a2", "a3", "a4", "a5"]
    assert held["a1"]["budget"] == "zones[zone=a]"
    assert "5/5 nodes unhealthy, more than unhealthy_threshold=0.55" in held["a1"]["detail"]
    assert reports[-1].enforcement["held_by_budget"][0]["budget"] == "zones[zone=a]"


def test_held_actions_are_released_in_order_at_the_budgets_rate(make_orchestrator, clock, tmp_path, monkeypatch):
    orch = hot_cluster(make_orchestrator, tmp_path, monkeypatch, 4, """
enforcement:
  budgets: [{name: fleet, rate: {per_second: 0.2, burst: 1}}]
""")
    order, reports = [], []
    for _ in range(5):
        beat(orch, clock, "n04", "n02", "n03", "n01", load=0.95)
        reports.append(orch.tick())
        order.append(approved(reports[-1]))
        clock.advance(5)  # one token a tick
    assert order == [["n01"], ["n02"], ["n03"], ["n04"], []]
    # the others waited as held_by_budget, naming the budget and its rate
    held = [e for e in reports[0].lifecycle if e["state"] == "held_by_budget"]
    assert sorted(e["target"] for e in held) == ["n02", "n03", "n04"]
    assert held[0]["budget"] == "fleet" and "rate 0.2/s (burst 1) used up" in held[0]["detail"]
    assert [len(r.enforcement["held_by_budget"]) for r in reports] == [3, 2, 1, 0, 0]


def test_the_zone_outage_scenario_is_held_by_its_budget_and_without_it_the_zone_is_isolated():
    import dataclasses

    from wyneos_core.simulate import load_scenario, resolve_scenario, simulate

    scenario = load_scenario(resolve_scenario("builtin:zone-outage-budget"))
    result = simulate(scenario)
    zone, lone = result.summary["faults"]
    assert zone["nodes"] == 10 and zone["detected"] == 10 and zone["acted"] == 0
    assert lone["acted"] == 1 and result.orchestrator.registry["node-0025"].isolated
    assert not any(result.orchestrator.registry[f"node-{i:04d}"].isolated for i in range(1, 11))
    assert result.orchestrator.registry["node-0001"].metadata["zone"] == "zone-1"
    assert result.failures == []
    # the same outage without the budget: nodes of the zone are isolated
    unbudgeted = dataclasses.replace(scenario, config={**scenario.config, "enforcement": {"budgets": []}})
    bare = simulate(unbudgeted)
    assert bare.summary["faults"][0]["acted"] >= 1


def test_a_budget_token_is_spent_only_on_an_action_the_decide_step_approves(make_orchestrator, clock, tmp_path,
                                                                            monkeypatch):
    # the per-tick isolation limit defers n02: the token it was admitted with comes back
    orch = hot_cluster(make_orchestrator, tmp_path, monkeypatch, 2, """
enforcement:
  budgets: [{name: fleet, rate: {per_second: 0.001, burst: 2}}]
""")
    orch.config["decide"]["max_isolations_per_tick"] = 1
    beat(orch, clock, "n01", "n02", load=0.95)
    first = orch.tick()
    assert approved(first) == ["n01"]
    assert [e["state"] for e in first.lifecycle if e["target"] == "n02"] == ["deferred"]
    clock.advance(5)  # (the bucket refills 0.005 of a token meanwhile)
    beat(orch, clock, "n01", "n02", load=0.95)
    assert approved(orch.tick()) == ["n02"]  # the second token was given back, so n02 goes now
