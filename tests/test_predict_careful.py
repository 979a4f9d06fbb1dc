"""Predictive rules are careful: they warn by default, never isolate on a prediction alone,
and a benign periodic burst (a nightly cron job) causes no action."""

from __future__ import annotations

import textwrap

import pytest
from predict_helpers import LeavePredictions, LinePredictions

from tests.conftest import beat, cluster_yaml
from wyneos_core.rules.flapguard import FlapGuard
from wyneos_core.rules.loader import RulesetError, load_ruleset


def ruleset(tmp_path, body: str, name: str = "predictive"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        ruleset: {name}
        stage: enforcement
        rules:
        """) + textwrap.indent(textwrap.dedent(body), "  "))
    return path


def test_isolating_on_a_prediction_alone_is_refused_where_it_is_written(tmp_path) -> None:
    path = ruleset(tmp_path, """\
        - id: disk-will-fill
          description: the disk fills within two hours
          when: 'time_to(node.metrics.disk_used, 1.0) < "2h" or anomaly(node.metrics.cpu) > 0.99'
          then:
            - degrade: {}
            - isolate: {}
        """)
    with pytest.raises(RulesetError) as info:
        load_ruleset(path)
    err = info.value
    assert "isolate on a prediction alone is refused" in str(err)
    assert err.line == 9 and err.field == "rules[0].then[1].isolate"


@pytest.mark.parametrize("when, ok", [
    ('anomaly(node.metrics.cpu) > 0.99 and node.status == "stale"', True),
    ('(forecast(node.metrics.disk_used, "1h") > 0.95 or trend(node.metrics.cpu) > 0) and node.load > 0.9', True),
    ('forecast(node.metrics.disk_used, "1h") > 0.95 and True', False),
    ('not anomaly(node.metrics.cpu) < 0.5', False),
    ('anomaly(node.metrics.cpu) > 0.9 or node.status == "offline"', False),
    ('node.metrics.disk_used > 0.99', True),  # an observed value, not a prediction
])
def test_what_counts_as_backed_by_an_observed_fact(tmp_path, when, ok) -> None:
    path = ruleset(tmp_path, f"""\
        - id: r
          description: r
          when: '{when}'
          then:
            - isolate: {{}}
        """)
    if ok:
        load_ruleset(path)
    else:
        with pytest.raises(RulesetError, match="prediction alone"):
            load_ruleset(path)


def test_predictive_rules_hold_for_fifteen_minutes_unless_they_say_otherwise(tmp_path) -> None:
    path = ruleset(tmp_path, """\
        - id: a
          description: a
          when: 'trend(node.metrics.memory) > 0'
          then: [{degrade: {}}]
        - id: b
          description: b
          when: 'trend(node.metrics.memory) > 0'
          for: 0
          then: [{degrade: {}}]
        - id: c
          description: c
          when: 'node.metrics.memory > 0.5'
          then: [{degrade: {}}]
        """)
    rules = {r.id: r for r in load_ruleset(path).rules}
    assert (rules["a"].for_.amount, rules["a"].for_.unit) == (900.0, "seconds") and rules["a"].predictive
    assert rules["b"].for_.amount == 0 and rules["b"].predictive
    assert rules["c"].for_.amount == 0 and not rules["c"].predictive


def rising(node_ids, now):
    """Memory rising 1% a minute on every node, seen over the last 10 minutes."""
    return {(n, "memory"): [(now - 60 * k, 0.5 - 0.01 * k) for k in range(10, -1, -1)] for n in node_ids}


def test_a_predictive_rule_warns_and_does_not_act_unless_told(make_orchestrator, clock, tmp_path) -> None:
    path = ruleset(tmp_path, """\
        - id: memory-will-run-out
          description: memory runs out within the hour
          when: 'time_to(node.metrics.memory, 1.0) < "1h"'
          for: 0
          then: [{degrade: {}}]
        - id: memory-will-run-out-enforced
          description: the same, acting
          when: 'time_to(node.metrics.memory, 1.0) < "1h"'
          for: 0
          mode: enforce
          then: [{reduce_load: {}}]
        """)
    provider = LinePredictions(rising(["n01"], clock()))
    orch = make_orchestrator(cluster_yaml(2, extra=f"rulesets: {{paths: [{path}]}}"),
                             plugins=[LeavePredictions(provider)])
    beat(orch, clock, "n01", "n02")
    report = orch.tick()
    assert {(a.type, a.target) for a in report.proposed} == {("degrade", "n01"), ("reduce_load", "n01")}
    assert {(a.type, a.target) for a in report.actions} == {("reduce_load", "n01")}
    warned = report.enforcement["findings"]
    assert [(f["type"], f["mode"]) for f in warned] == [("degrade", "warn")]
    assert "predicts" in warned[0]["setting"]


def test_the_flap_guard_holds_back_a_nightly_burst_but_not_a_lasting_failure() -> None:
    guard = FlapGuard()
    day = 86400.0
    seen = []
    t = 3 * 3600.0  # 03:00 on day 0
    for night in range(4):
        start = t + night * day + 60 * night  # the job starts a minute later each night
        for minute in range(0, 20):  # a 20-minute burst
            seen.append((night, bool(guard.filter(["n1"], start + 60 * minute))))
        guard.filter([], start + 25 * 60)
    first = [s for n, s in seen if n == 0]
    later = [s for n, s in seen if n > 0]
    assert all(first) and not any(later)
    # night 4: the "burst" does not end: after an hour it is no burst, the rule sees it
    start = t + 4 * day
    out = [bool(guard.filter(["n1"], start + 60 * m)) for m in range(0, 90)]
    assert not any(out[:60]) and all(out[61:])
    # another node, same time of day, never burst before: not held
    assert guard.filter(["n2"], start + 120) == ["n2"]


def test_the_ruleset_of_docs_prediction_loads_as_predictive(tmp_path) -> None:
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "prediction.md").read_text()
    [block] = re.findall(r"```yaml ruleset\n(.*?)```", page, re.S)
    path = tmp_path / "capacity.yaml"
    path.write_text(block)
    rules = {r.id: r for r in load_ruleset(path).rules}
    assert rules["disk-fills"].predictive and rules["disk-fills"].for_.amount == 900
    assert rules["cpu-climbing"].predictive and rules["cpu-climbing"].mode == "enforce"
    # the isolation the page refuses is refused
    path.write_text(block.replace("- degrade: {}", "- isolate: {}", 1))
    with pytest.raises(RulesetError, match="prediction alone"):
        load_ruleset(path)
