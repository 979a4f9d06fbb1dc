"""The simulation's fault kinds leak, disk_fill, cron_burst and drift, through the real
orchestrator: telemetry in heartbeats, the real detectors, predictive rules, the drift step."""

from __future__ import annotations

import dataclasses

import pytest

from wyneos_core.simulate.runner import simulate, summary_text
from wyneos_core.simulate.scenario import load_scenario, resolve_scenario

pytestmark = pytest.mark.slow


def shipped(name: str, **changes):
    scenario = load_scenario(resolve_scenario(f"builtin:{name}"))
    return dataclasses.replace(scenario, **changes) if changes else scenario


def test_a_memory_leak_is_warned_of_before_the_crash() -> None:
    result = simulate(shipped("memory-leak"))
    p = result.summary["prediction"]
    assert result.failures == []
    assert p["failures"] == 4 and p["warned_before_failure"] == 4 and p["missed"] == 0
    # each crash was seen coming at least an hour ahead (the rule: runs out within 2 h, held 15 min)
    assert p["lead_time_s"]["p10"] >= 3600 and p["lead_time_s"]["median"] <= 2 * 3600
    assert p["false_warnings"] == 0 and p["predictive_actions"] == 0
    # the crash itself happened: the nodes went silent and were isolated (not a false isolation)
    assert result.summary["false_isolations"] == 0 and result.summary["isolations"] == 4
    assert "4 of 4 failures warned of before they happened" in summary_text(result.summary)


def test_a_disk_filling_is_warned_of_before_the_node_fails() -> None:
    result = simulate(shipped("disk-fill"))
    p = result.summary["prediction"]
    assert result.failures == []
    assert p["failures"] == 3 and p["warned_before_failure"] == 3
    assert p["lead_time_s"]["p10"] >= 3600 and p["false_warnings"] == 0


def test_a_nightly_cron_burst_causes_no_action() -> None:
    result = simulate(shipped("cron-burst", nodes=12, ticks=3 * 288))
    p = result.summary["prediction"]
    assert result.failures == []
    # the acting rule's condition held during the bursts (on many nights)...
    assert p["predictive_pending"] >= 6
    # ...yet nothing was decided, nor warned of, nor isolated
    assert p["predictive_actions"] == 0 and p["warnings"] == 0
    assert result.summary["isolations"] == 0
    assert sum(sum(s.actions.values()) for s in result.samples) == 0


def test_a_longer_burst_is_held_back_by_the_flap_guard_from_the_second_night() -> None:
    # a 25-minute burst outlasts the 15-minute hold: the first night it is acted on,
    # the nights after the flap guard knows it
    scenario = shipped("cron-burst", nodes=6, ticks=4 * 288)
    faults = [dataclasses.replace(scenario.faults[0], params={**scenario.faults[0].params, "length": 5})]
    result = simulate(dataclasses.replace(scenario, faults=faults, expect={}))
    p = result.summary["prediction"]
    assert p["held_by_flap_guard"] >= 6 * 2  # nights 3 and 4 at least, on every node
    assert p["predictive_actions"] <= 6  # the first night's burst, on each node, at most


def test_drift_outside_the_declaration_is_seen_at_once() -> None:
    result = simulate(shipped("config-drift"))
    p = result.summary["prediction"]
    assert result.failures == []
    assert p["drifted"] == 5 and p["drift_detected"] == 5
    assert p["drift_latency_ticks"]["max"] <= 1
    faults = {f["fault"]: f for f in result.summary["faults"]}
    assert all(f["detected"] == f["nodes"] for f in faults.values())
