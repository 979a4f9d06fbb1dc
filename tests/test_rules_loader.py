"""Loading rulesets: refusals name file, line and field; durations; templates; the state machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from wyneos_core.model import LicenceResult, Node, NodeStatus, Severity
from wyneos_core.rules.interp import EvalEnv
from wyneos_core.rules.loader import RulesetError, load_ruleset
from wyneos_core.rules.state import FIRING, INACTIVE, PENDING, RESOLVED, Duration, StateTracker, parse_duration

GOOD = """\
ruleset: baseline
stage: governance
rules:
  - id: load-ceiling
    description: Nodes stay below 90% load
    require: node.load < 0.9
    for: 3 ticks
    keep_firing_for: 30s
    severity: critical
    labels: {team: infra}
    message: "load {node.load:.2f} on {node.id} ({rule.id}, {ruleset})"
"""


def test_a_good_ruleset_loads() -> None:
    rs = load_ruleset("baseline.yaml", text=GOOD)
    assert (rs.name, rs.stage, rs.engine) == ("baseline", "governance", "native")
    rule = rs.rules[0]
    assert rule.for_ == Duration(3, "ticks") and rule.keep_firing_for == Duration(30.0, "seconds")
    assert rule.severity is Severity.CRITICAL and rule.labels == {"team": "infra"}
    env = EvalEnv(0.0, {})
    text = rule.message.render(Node("n1", load=0.934), LicenceResult("n1", True), env)
    assert text == "load 0.93 on n1 (load-ceiling, baseline)"


BAD = [
    # (text, line, field, words)
    ("ruleset: x\nstage: governance\nrules: [\n", 4, None, "invalid YAML"),
    ("ruleset: x\nstage: governance\nrules: []\nextra: 1\n", 4, "extra", "unknown field"),
    ("ruleset: X Y\nstage: governance\nrules: []\n", 1, "ruleset", "lowercase letters, digits, '.', '_' or '-'"),
    ("ruleset: x\nstage: policing\nrules: []\n", 2, "stage", "not one of"),
    ("ruleset: x\nstage: governance\nrules:\n  - id: a\n    description: d\n    require: node.load < 1\n"
     "  - id: a\n    description: d\n    require: node.load < 2\n", 7, "rules[1].id", "duplicate rule id"),
    ("ruleset: x\nstage: governance\nrules:\n  - id: a\n    description: d\n    require: node.bogus < 1\n",
     6, "rules[0].require", "has no field 'bogus'"),
    ("ruleset: x\nstage: governance\nrules:\n  - id: a\n    description: d\n    require: node.__class__\n",
     6, "rules[0].require", "not allowed"),
    ("ruleset: x\nstage: governance\nrules:\n  - id: a\n    description: d\n    when: node.load < 1\n"
     "    then: [isolate: {}]\n", 6, "rules[0].when", "not allowed in a governance ruleset"),
    ("ruleset: x\nstage: healing\nrules:\n  - id: a\n    description: d\n    when: node.load > 1\n", 4, "rules[0]",
     "'then'"),
    ("ruleset: x\nstage: governance\nrules:\n  - id: a\n    description: d\n    require: node.load < 1\n"
     "    for: 3 weeks\n", 7, "rules[0].for", "not a duration"),
    ("ruleset: x\nstage: governance\nrules:\n  - id: a\n    description: d\n    require: node.load < 1\n"
     "    message: '{node.load!r}'\n", 7, "rules[0].message", "conversions"),
    ("ruleset: x\nstage: governance\nrules:\n  - id: a\n    description: d\n    require: node.load < 1\n"
     "    message: '{node.load * 2}'\n", 7, "rules[0].message", "not expressions"),
    ("ruleset: x\nstage: governance\nengine: durable\nrules:\n  - id: a\n    description: d\n"
     "    require: node.load * 2 < 1\n", 7, "rules[0].require", "durable engine cannot run"),
    ("ruleset: x\nstage: governance\nrules:\n  - &r {id: a, description: d, require: node.load < 1}\n"
     "  - *r\n", 4, "rules[1]", "aliases"),
]


@pytest.mark.parametrize("text,line,field,words", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_rulesets_are_refused_with_file_line_and_field(text: str, line: int, field: str | None,
                                                           words: str) -> None:
    with pytest.raises(RulesetError) as info:
        load_ruleset("rules/bad.yaml", text=text)
    err = info.value
    assert err.file == "rules/bad.yaml"
    assert err.line == line, str(err)
    assert err.field == field, str(err)
    assert words in err.reason, str(err)
    assert str(err).startswith(f"rules/bad.yaml:{line}")


def test_expression_errors_point_at_the_column_in_the_file() -> None:
    text = "ruleset: x\nstage: governance\nrules:\n  - id: a\n    description: d\n    require: node.load < 1 and node.bogus\n"
    with pytest.raises(RulesetError) as info:
        load_ruleset("f.yaml", text=text)
    assert (info.value.line, info.value.column) == (6, 32)  # the "node.bogus" in the file
    assert str(info.value).startswith("f.yaml:6:32: rules[0].require: node has no field 'bogus'")


def test_loading_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    assert load_ruleset(path).file == str(path)
    with pytest.raises(RulesetError, match="cannot read"):
        load_ruleset(tmp_path / "absent.yaml")


@pytest.mark.parametrize("text,want", [
    (0, Duration(0, "ticks")), ("0", Duration(0, "ticks")), ("1 tick", Duration(1, "ticks")),
    ("3 ticks", Duration(3, "ticks")), ("30s", Duration(30.0, "seconds")), ("5m", Duration(300.0, "seconds")),
    ("1m30s", Duration(90.0, "seconds")), ("500ms", Duration(0.5, "seconds")), ("2h", Duration(7200.0, "seconds")),
])
def test_durations(text: object, want: Duration) -> None:
    assert parse_duration(text) == want


@pytest.mark.parametrize("text", ["3", "3 weeks", "s", "1x", True, 2.5])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def _run(tracker: StateTracker, pattern: str, start_tick: int = 1, dt: float = 10.0) -> list[str]:
    """Feed a pattern of ticks ("1" condition true, "0" false) and collect the states of node n."""
    out = []
    for i, c in enumerate(pattern):
        tick = start_tick + i
        tracker.step(["n"] if c == "1" else [], tick, tick * dt)
        out.append(tracker.state_of("n"))
    return out


def test_state_machine_for_in_ticks() -> None:
    t = StateTracker(Duration(2, "ticks"))
    assert _run(t, "1110") == [PENDING, PENDING, FIRING, RESOLVED]
    assert _run(t, "0", 5) == [INACTIVE]
    t = StateTracker(Duration(2, "ticks"))
    assert _run(t, "11011") == [PENDING, PENDING, INACTIVE, PENDING, PENDING]  # a gap restarts the wait


def test_state_machine_for_zero_fires_at_once_and_resolves_at_once() -> None:
    t = StateTracker()
    assert _run(t, "1001") == [FIRING, RESOLVED, INACTIVE, FIRING]


def test_state_machine_for_in_seconds() -> None:
    t = StateTracker(Duration(25.0, "seconds"))
    assert _run(t, "1111", dt=10.0) == [PENDING, PENDING, PENDING, FIRING]


def test_keep_firing_for_holds_a_firing_rule() -> None:
    t = StateTracker(keep=Duration(2, "ticks"))
    assert _run(t, "100010") == [FIRING, FIRING, FIRING, RESOLVED, FIRING, FIRING]
    t = StateTracker(keep=Duration(15.0, "seconds"))
    assert _run(t, "10000", dt=10.0) == [FIRING, FIRING, FIRING, RESOLVED, INACTIVE]


def test_transitions_are_reported_and_departed_nodes_forgotten() -> None:
    t = StateTracker(Duration(1, "ticks"))
    assert sorted(t.step(["a", "b"], 1, 1.0)) == [("a", INACTIVE, PENDING), ("b", INACTIVE, PENDING)]
    assert sorted(t.step(["a"], 2, 2.0)) == [("a", PENDING, FIRING), ("b", PENDING, INACTIVE)]
    assert t.forget({"b"}) == [("a", FIRING)]  # what was dropped, so that its end is reported
    assert t.states == {}
