"""Why the cluster looks as it does, from a real server on 127.0.0.1: licences by reason,
rules with failing and firing counts, the cause of each action in force (API and
/metrics), on a cluster with real signed licences in several states."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from why_helpers import licensed_service

from wyneos_core.causes import action_cause, clears_text
from wyneos_core.model import Action
from wyneos_core.service.server import ServerThread


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text``."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    raise AssertionError(f"no sample {name}{{{want}}}")


@pytest.fixture
def served(tmp_path):
    service = licensed_service(tmp_path)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        deadline = time.monotonic() + 20
        while client.get("/healthz").json()["tick"] < 3:
            assert time.monotonic() < deadline, "the server never ran 3 ticks"
            time.sleep(0.05)
        yield service, client


def test_licences_rules_and_causes_over_http(served):
    service, client = served
    licences = client.get("/v1/licences").json()
    assert licences["total"] == 8
    rows = {(r["state"], r["reason"]): r for r in licences["reasons"]}
    assert rows[("invalid", "no_licence")]["examples"] == ["none-1"]
    assert rows[("invalid", "no_licence")]["meaning"] == "no configured source has a licence for the node"
    assert rows[("invalid", "expired")]["detail"].startswith("licence lic-acme-03 expired ")
    assert rows[("in_grace", "expired")]["examples"] == ["grace-1"]
    assert rows[("valid", "ok")]["count"] == 5
    assert [r["state"] for r in licences["reasons"]] == ["invalid", "invalid", "in_grace", "valid"]

    rules = {r["rule"]: r for r in client.get("/v1/rules").json()["rules"]}
    assert rules["version-floor"]["failing"] == 1 and rules["version-floor"]["firing"] == 1
    assert rules["version-floor"]["examples"] == ["old-1"]
    # bare-1 reports no version at all: "no version reported", not a version below the floor
    assert rules["version-reported"]["failing"] == 1 and rules["version-reported"]["examples"] == ["bare-1"]
    assert rules["required-metadata"] == {**rules["required-metadata"], "failing": 1, "passed": 7,
                                          "examples": ["bare-1"], "severity": "warning"}
    assert rules["load-ceiling"]["failing"] == 0 and rules["load-ceiling"]["examples"] == []

    node = client.get("/v1/nodes/none-1").json()
    assert node["licence"]["state"] == "invalid" and node["licence"]["reason"] == "no_licence"
    assert client.get("/v1/nodes/grace-1").json()["licence"]["state"] == "in_grace"
    assert client.get("/v1/nodes/ok-1").json()["licence"]["state"] == "valid"

    in_force = {(a["type"], a["target"]): a for a in client.get("/v1/actions").json()["in_force"]}
    assert set(in_force) == {("isolate", "none-1"), ("isolate", "exp-1"), ("degrade", "grace-1"),
                             ("quarantine", "old-1"), ("quarantine", "bare-1"), ("isolate", "bad-1")}
    unlicensed = in_force[("isolate", "none-1")]
    assert unlicensed["cause"]["label"] == "licence:no_licence"
    assert unlicensed["cause"]["rule"] == "licence-enforcement/isolate-unlicensed"
    assert unlicensed["reason"] == "no licence: the node names no licence (sources: file)"
    assert in_force[("quarantine", "old-1")]["cause"]["label"] == "rule:version-floor"
    assert in_force[("quarantine", "old-1")]["cause"]["rule"] == "licence-enforcement/quarantine-below-version-floor"
    assert in_force[("quarantine", "bare-1")]["cause"]["label"] == "rule:version-reported"
    assert in_force[("isolate", "bad-1")]["cause"]["label"] == "plugin:test-quarantine"
    first = service.committed_ticks(1000)[-1]
    assert unlicensed["first_tick"] == 1 and unlicensed["since"] == pytest.approx(first["started_at"])


def test_metrics_count_licences_rules_and_actions_by_reason(served):
    service, client = served
    text = client.get("/metrics").text
    assert metric(text, "wyneos_licences", reason="ok") == 5
    assert metric(text, "wyneos_licences", reason="no_licence") == 1
    assert metric(text, "wyneos_licences", reason="expired") == 1  # the one past its grace
    assert metric(text, "wyneos_licences", reason="in_grace") == 1
    assert metric(text, "wyneos_licences", reason="revoked") == 0  # every code is there, at 0 when unused
    assert metric(text, "wyneos_rule_failing_nodes", rule="version-floor") == 1
    assert metric(text, "wyneos_rule_firing_nodes", rule="version-floor") == 1
    assert metric(text, "wyneos_rule_failing_nodes", rule="version-reported") == 1
    assert metric(text, "wyneos_rule_failing_nodes", rule="load-ceiling") == 0
    assert metric(text, "wyneos_actions_in_force_by_reason", type="isolate", reason="licence:no_licence") == 1
    assert metric(text, "wyneos_actions_in_force_by_reason", type="isolate", reason="licence:expired") == 1
    assert metric(text, "wyneos_actions_in_force_by_reason", type="degrade", reason="licence:expired") == 1
    assert metric(text, "wyneos_actions_in_force_by_reason", type="quarantine", reason="rule:version-floor") == 1
    assert metric(text, "wyneos_actions_in_force_by_reason", type="quarantine", reason="rule:version-reported") == 1
    assert metric(text, "wyneos_actions_in_force_by_reason", type="isolate", reason="plugin:test-quarantine") == 1


def test_a_cause_that_clears_reads_zero(tmp_path):
    service = licensed_service(tmp_path)
    try:
        for _ in range(2):
            service.tick()
        text = service.metrics.render().decode()
        assert metric(text, "wyneos_actions_in_force_by_reason", type="isolate", reason="plugin:test-quarantine") == 1
        node = service.orchestrator.registry["bad-1"]
        node.metadata = {k: v for k, v in node.metadata.items() if k != "role"}  # replaced, never changed in place
        keep = service.orchestrator.config["decide"]["keep_firing_ticks"]
        for _ in range(keep + 2):
            service.tick()
        text = service.metrics.render().decode()
        assert metric(text, "wyneos_actions_in_force_by_reason", type="isolate", reason="plugin:test-quarantine") == 0
        assert metric(text, "wyneos_actions_in_force_by_reason", type="isolate", reason="licence:no_licence") == 1
    finally:
        service.stop()


@pytest.mark.parametrize(("action", "kind", "label"), [
    (Action("isolate", "n", "r", "ruleset:licence-enforcement/isolate-unlicensed",
            params={"licence_reason": "no_licence"}), "licence", "licence:no_licence"),
    (Action("isolate", "n", "r", "enforcement", params={"licence_reason": "revoked"}), "licence", "licence:revoked"),
    (Action("quarantine", "n", "r", "enforcement", params={"rule": "version-floor"}), "rule", "rule:version-floor"),
    (Action("reduce_load", "n", "r", "ruleset:healing/reduce-overload"), "rule", "rule:healing/reduce-overload"),
    (Action("reinstate", "n", "r", "decide"), "probation", "probation"),
    (Action("reduce_load", "n", "r", "healing"), "plugin", "plugin:healing"),
])
def test_action_causes(action, kind, label):
    cause = action_cause(action)
    assert (cause.kind, cause.label) == (kind, label)
    assert action_cause(action.to_dict()) == cause  # the stored form says the same
    assert action_cause({"origin": action.origin, "params": "not a mapping"}).kind in ("rule", "probation", "plugin")


def test_what_clears_an_action_in_words():
    cause = action_cause(Action("isolate", "n", "r", "ruleset:licence-enforcement/isolate-unlicensed",
                                params={"licence_reason": "no_licence"}))
    assert clears_text(cause, keep_firing_ticks=2, rule_condition='licence.reason == "no_licence"',
                       licence_now="no_licence", isolating=True, probation_ticks=3) == (
        "clears when the node's licence is no longer no_licence (now: no_licence) for more than 2 ticks "
        "(decide.keep_firing_ticks); then the node is reinstated once it has been online for its probation "
        "(3 ticks, doubled for a flapping node)")
    rule = action_cause(Action("reduce_load", "n", "r", "ruleset:healing/reduce-overload"))
    assert clears_text(rule, keep_firing_ticks=0, rule_condition="node.load > 0.9") == (
        "clears when rule healing/reduce-overload stops firing on the node (node.load > 0.9 no longer true) "
        "(in the first tick it no longer holds: decide.keep_firing_ticks is 0)")
    assert clears_text(action_cause(Action("reduce_load", "n", "r", "healing")), keep_firing_ticks=1) == (
        "clears when plugin healing stops proposing it for more than 1 tick (decide.keep_firing_ticks)")


def test_the_overviews_are_computed_once_per_tick():
    from wyneos_core.model import TickReport
    from wyneos_core.service.overview import PerTick

    calls = []
    cached = PerTick(lambda report: calls.append(report) or {"tick": report.tick if report else None})
    first, second = TickReport(1, 0.0), TickReport(2, 0.0)
    assert cached(first) == {"tick": 1} and cached(first) == {"tick": 1}
    assert cached(second) == {"tick": 2} and cached(None) == {"tick": None} and cached(None) == {"tick": None}
    assert calls == [first, second, None, None]  # no report: nothing to remember
