"""Defaults that never punish a new fleet, and modes: the quick start's variations isolate
nobody; warn and audit findings are reported and never acted on."""

from __future__ import annotations

from enforcement_helpers import hot

from tests.conftest import beat, cluster_yaml

QUICKSTART_RULESETS = 'rulesets: {paths: ["builtin:"]}\n'
RULESETS_ONLY = "[governance, healing, enforcement, licence]"


def run(orch, clock, ticks, **metadata):
    reports = []
    ids = [n.id for n in orch.registry]
    for _ in range(ticks):
        beat(orch, clock, *ids, **metadata)
        reports.append(orch.tick())
        clock.advance(5)
    return reports


def severe(report):
    return [a for a in report.actions if a.type in ("isolate", "quarantine")]


def test_licence_step_off_with_the_builtin_rulesets_isolates_nobody(make_orchestrator, clock):
    # the quick start's suggestion: plugins.disable [licence] with the shipped rulesets
    orch = make_orchestrator(cluster_yaml(6, disable=RULESETS_ONLY, extra=QUICKSTART_RULESETS))
    reports = run(orch, clock, 4, region="eu", version="2.4.1")
    assert all(not severe(r) for r in reports)
    assert not any(n.isolated for n in orch.registry)
    # a step that is off is "not evaluated", never a failure: no rule fires on it
    assert not [a for r in reports for a in r.proposed if "licence_reason" in a.params]
    assert all(r.enforcement["findings"] == [] for r in reports)


def test_licence_step_on_without_keys_enforces_no_licence_and_says_so_every_tick(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(12, disable="[governance, healing, enforcement]",
                                          extra=QUICKSTART_RULESETS))
    reports = run(orch, clock, 3, region="eu", version="2.4.1")
    assert all(not severe(r) for r in reports)
    assert not any(n.isolated for n in orch.registry)
    for r in reports:
        assert r.enforcement["licence_enforced"] is False
        assert any("licences are not enforced" in n for n in r.notes)
    first = reports[0]
    # the real reason is reported (no licence found), and the finding is audited, not acted on
    assert first.licences["n01"].reason == "no_licence"
    audited = [f for f in first.enforcement["findings"] if f["target"] == "n01"]
    assert audited and audited[0]["mode"] == "audit" and audited[0]["setting"] == "licence_unkeyed"
    assert first.enforcement["modes"]["audit"] >= 12
    states = {(e["target"], e["state"]) for e in first.lifecycle}
    assert ("n01", "audited") in states and ("n01", "approved") not in states


def test_a_node_reporting_what_a_stock_agent_reports_is_not_quarantined(make_orchestrator, clock):
    from wyneos_core import __version__

    orch = make_orchestrator(cluster_yaml(4, disable=RULESETS_ONLY, extra=QUICKSTART_RULESETS))
    # what wyneos agent sends: its hostname, cpus, its own version under agent and version; no region
    reports = run(orch, clock, 4, hostname="h", cpus=2, agent=__version__, version=__version__)
    assert all(not severe(r) for r in reports)
    last = reports[-1]
    # the version floor is reported (warn), not acted on
    warned = {f["target"] for f in last.enforcement["findings"] if f["mode"] == "warn"}
    assert warned == {"n01", "n02", "n03", "n04"}
    assert any(e["state"] == "warned" for r in reports for e in r.lifecycle)


MODES = """
rulesets: {paths: [rules.yaml]}
enforcement:
  mode: enforce
  actions: {quarantine: audit}
  rules: {hot/isolate-hot: warn}
"""

RULES = hot(0.9, """  - id: quarantine-warm
    description: warm nodes are quarantined
    when: node.load > 0.5
    then: [{quarantine: {}}]
  - id: shed-warm
    description: warm nodes shed load
    when: node.load > 0.5
    mode: warn
    then: [{reduce_load: {target_load: 0.4}}]
  - id: degrade-warm
    description: warm nodes run degraded
    when: node.load > 0.5
    then: [{degrade: {}}]
""")


def test_modes_by_rule_action_type_and_the_rules_own_field(make_orchestrator, clock, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules.yaml").write_text(RULES)
    orch = make_orchestrator(cluster_yaml(3, disable="[governance, healing, enforcement]", extra=MODES))
    beat(orch, clock, "n01", "n02", "n03", load=0.95)
    report = orch.tick()
    by = {(f["type"], f["target"]): (f["mode"], f["setting"]) for f in report.enforcement["findings"]}
    assert by[("isolate", "n01")] == ("warn", "enforcement.rules[hot/isolate-hot]")
    assert by[("quarantine", "n01")] == ("audit", "enforcement.actions[quarantine]")
    assert by[("reduce_load", "n01")] == ("warn", "rule hot/shed-warm mode")
    # only the degrade (enforce by default) acts
    assert sorted({a.type for a in report.actions}) == ["degrade"]
    assert report.enforcement["modes"] == {"enforce": 3, "warn": 6, "audit": 3}
    assert report.to_dict()["enforcement"]["modes"]["warn"] == 6


def test_validate_warns_when_no_licence_can_be_enforced(tmp_path):
    from wyneos_core.validate import validate_file

    config = tmp_path / "c.yaml"
    config.write_text(cluster_yaml(2, disable="[]"))
    (warning,) = [w for w in validate_file(config)["warnings"] if "trusted_keys" in w]
    assert "licences are not enforced" in warning
    config.write_text(cluster_yaml(2, disable="[licence]"))
    assert not [w for w in validate_file(config)["warnings"] if "trusted_keys" in w]


def test_a_ruleset_changed_by_hot_reload_can_start_in_audit(make_orchestrator, clock, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.replace("ruleset: hot\n", "ruleset: hot\nreload_mode: audit\n"))
    orch = make_orchestrator(cluster_yaml(3, disable="[governance, healing, enforcement]",
                                          extra="rulesets: {paths: [rules.yaml]}\n"))
    beat(orch, clock, "n01", "n02", "n03", load=0.95)
    first = orch.tick()
    assert "isolate" in {a.type for a in first.actions}  # loaded at start: its own modes
    # the file changes while running: the new version runs in audit until a restart
    rules.write_text(RULES.replace("ruleset: hot\n", "ruleset: hot\nreload_mode: audit\n")
                     .replace("node.load > 0.5", "node.load > 0.6"))
    import os

    os.utime(rules, (clock() + 10, clock() + 10))
    clock.advance(5)
    beat(orch, clock, "n01", "n02", "n03", load=0.95)
    second = orch.tick()
    assert any("rules.yaml" in n for n in second.notes)  # reloaded
    assert not [a for a in second.actions if a.origin.startswith("ruleset:hot/")]
    settings = {f["setting"] for f in second.enforcement["findings"]}
    assert settings == {"ruleset hot mode"}
    assert second.enforcement["modes"]["enforce"] == 0
