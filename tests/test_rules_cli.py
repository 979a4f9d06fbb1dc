"""wyneos check / test / explain, and the shipped rulesets' own YAML tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wyneos_core.cli import main
from wyneos_core.rules.runtime import shipped_rulesets_dir
from wyneos_core.rules.testing import run_test_file

SHIPPED = shipped_rulesets_dir()


def test_shipped_rulesets_pass_check(capsys) -> None:
    assert main(["check", str(SHIPPED)]) == 0
    out = capsys.readouterr().out
    assert "ruleset 'governance' (governance, 5 rules)" in out
    assert "ruleset 'healing'" in out and "ruleset 'licence-enforcement'" in out
    assert "ruleset tests" in out  # the test files under rulesets/tests are checked too


def test_shipped_rulesets_can_run_on_durable_rules(capsys) -> None:
    assert main(["check", "--engine", "durable", str(SHIPPED)]) == 0


@pytest.mark.parametrize("name", ["governance", "healing", "licence-enforcement"])
def test_shipped_ruleset_unit_tests_pass(name: str) -> None:
    ruleset, outcomes = run_test_file(SHIPPED / "tests" / f"{name}_test.yaml")
    assert ruleset == name
    assert len(outcomes) >= 5
    failures = [(c.name, c.failures) for c in outcomes if not c.passed]
    assert failures == []


def test_check_reports_every_broken_file_with_file_and_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "ok.yaml").write_text("ruleset: ok\nstage: governance\nrules: []\n")
    (tmp_path / "a.yaml").write_text("ruleset: a\nstage: governance\nrules:\n  - id: r\n    description: d\n"
                                     "    require: node.load <\n")
    (tmp_path / "b.yml").write_text("ruleset: b\nstage: healing\nrules:\n  - id: r\n    description: d\n"
                                    "    when: node.load > 1\n    then: [isolate: {}]\n    severity: fatal\n")
    assert main(["check", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert f"{tmp_path / 'a.yaml'}:6" in captured.err and "syntax error" in captured.err
    assert f"{tmp_path / 'b.yml'}:8" in captured.err and "rules[0].severity" in captured.err
    assert "1 ok, 2 with errors" in captured.out
    assert main(["check", "--json", str(tmp_path / "a.yaml")]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["files"][0]["error"]["line"] == 6
    assert main(["check", str(tmp_path / "absent.yaml")]) == 1


def test_check_engine_durable_refuses_what_durable_cannot_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "r.yaml").write_text("ruleset: r\nstage: governance\nrules:\n  - id: r\n    description: d\n"
                                     "    require: node.load * 2 < 1\n")
    assert main(["check", str(tmp_path / "r.yaml")]) == 0
    assert main(["check", "--engine", "durable", str(tmp_path / "r.yaml")]) == 1
    assert "arithmetic" in capsys.readouterr().err


def test_wyneos_test_reports_failing_cases(tmp_path: Path, capsys) -> None:
    (tmp_path / "r.yaml").write_text(
        "ruleset: r\nstage: enforcement\nrules:\n  - id: cut\n    description: d\n"
        "    when: node.metadata.role == 'rogue'\n    then: [isolate: {}]\n")
    (tmp_path / "r_test.yaml").write_text(
        "ruleset: r.yaml\ntests:\n"
        "  - name: rogue nodes are cut\n    nodes: [{id: x, metadata: {role: rogue}}, {id: y}]\n"
        "    expect: {actions: [{type: isolate, target: x}]}\n"
        "  - name: a wrong expectation\n    nodes: [{id: y}]\n"
        "    expect: {actions: [{type: isolate, target: y}]}\n")
    assert main(["test", "-v", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "PASS" in out and "rogue nodes are cut" in out
    assert "FAIL" in out and "expected action isolate on y was not proposed" in out
    assert "1/2 ruleset test(s) passed" in out


def test_wyneos_test_refuses_a_malformed_test_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "t.yaml").write_text("ruleset: builtin:healing\ntests:\n  - name: x\n    nodez: []\n")
    assert main(["test", str(tmp_path / "t.yaml")]) == 1
    assert "t.yaml:4" in capsys.readouterr().err


def test_explain_shows_each_rule_and_its_parts(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("nodes:\n  - {id: a, metadata: {region: eu, version: '2.3.9'}}\n"
                   "rulesets: {paths: ['builtin:governance', 'builtin:licence-enforcement']}\n"
                   "plugins: {disable: [licence]}\nstate: {path: ':memory:'}\n")
    assert main(["explain", "--node", "a", "--config", str(cfg), "--ticks", "2"]) == 0
    out = capsys.readouterr().out
    assert "version-floor: fails; state firing" in out
    assert "version_at_least(node.metadata.version, '2.4.0')  =>  False" in out
    assert "node.metadata.version  =>  '2.3.9'" in out
    # the licence step is off: not evaluated, never a failure (docs/enforcement.md)
    assert "isolate-unlicensed: does not apply; state inactive -> isolate" in out
    assert "licence.reason  =>  'not_evaluated'" in out
    assert main(["explain", "--node", "a", "--config", str(cfg), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    gov = next(rs for rs in data["rulesets"] if rs["name"] == "governance")
    assert {r["id"]: r["value"] for r in gov["rules"]}["version-floor"] is False
    assert main(["explain", "--node", "zz", "--config", str(cfg)]) == 2


def test_check_reports_every_broken_rule_of_a_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("ruleset: b\nstage: healing\nrules:\n"
                    "  - {id: r1, description: x, when: node.load >, then: [isolate: {}]}\n"
                    "  - {id: r1, description: y, when: node.load > 1, then: [isolate: {}]}\n"
                    "  - {id: r3, description: z, when: node.load > 1, then: [isolte: {}]}\n"
                    "  - {id: r4, description: w, when: node.load > 1, then: [x_page_oncall: {team: ops}]}\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:4:" in err and "syntax error" in err
    assert f"{path}:5:" in err and "duplicate rule id 'r1'" in err
    assert f"{path}:6:" in err and "unknown action type 'isolte': did you mean 'isolate'?" in err
    assert "r4" not in err and err.count(str(path)) == 3  # a custom x_ type is fine


def test_error_messages_stay_short_and_point_at_the_real_line(tmp_path: Path, capsys) -> None:
    many = tmp_path / "many.yaml"
    many.write_text("ruleset: m\nstage: governance\nrules:\n" + "".join(
        f"  - {{id: r{i}, description: d, require: node.load < 1}}\n" for i in range(1001)))
    params = tmp_path / "params.yaml"
    params.write_text("ruleset: p\nstage: healing\nrules:\n  - id: r\n    description: d\n    when: node.load > 1\n"
                      "    then: [{isolate: {a: {b: 1}}}]\n")
    folded = tmp_path / "folded.yaml"
    folded.write_text("ruleset: f\nstage: governance\nrules:\n  - id: r1\n    description: x\n    require: >-\n"
                      "      node.load < 0.9 and\n      node.bogus == 1\n")
    literal = tmp_path / "literal.yaml"
    literal.write_text(folded.read_text().replace(">-", "|").replace("      node.bogus", "        node.bogus"))
    assert main(["check", str(many), str(params), str(folded), str(literal)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{many}:3: rules: 1001 rules, more than 1000 in one ruleset; split it into several files"
    assert err[1].startswith(f"{params}:7:") and "rules[0].then[0].isolate.a: expected a string or a number" in err[1] \
        and err[1].endswith("got {'b': 1}")
    assert err[2].startswith(f"{folded}:8:7: rules[0].require: node has no field 'bogus'")
    assert err[3].startswith(f"{literal}:8:9: rules[0].require: node has no field 'bogus'")
    assert all(len(line) < 400 for line in err)


def test_wyneos_test_refuses_expectations_that_check_nothing(tmp_path: Path, capsys) -> None:
    base = f"ruleset: {SHIPPED / 'governance.yaml'}\ntests:\n  - name: c\n    nodes: [{{id: a, load: 0.1}}]\n"
    for expect, words in [("    expect: {}\n", "'expect' checks nothing"),
                          ("    expect: {results: []}\n", "'expect' checks nothing"),
                          ("", "the case has no 'expect'")]:
        path = tmp_path / "t_test.yaml"
        path.write_text(base + expect)
        assert main(["test", str(path)]) == 1
        err = capsys.readouterr().err
        assert words in err and f"{path}:" in err
    path.write_text(base + "    expect: {actions: []}\n")  # 'no actions' is a real expectation
    assert main(["test", str(path)]) == 0


def test_explain_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    import subprocess
    import sys

    # `true` exits without reading: the first write of explain meets a closed pipe
    for flag in ("--json", ""):
        proc = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m wyneos_core.cli explain "
                               f"--node node-05 {flag} | true"], capture_output=True, text=True, cwd=tmp_path,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_check_counts_one_rule_in_the_singular(tmp_path: Path, capsys) -> None:
    (tmp_path / "one.yaml").write_text("ruleset: one\nstage: governance\nrules:\n  - id: r\n    description: d\n"
                                       "    require: node.load < 0.9\n")
    assert main(["check", str(tmp_path / "one.yaml")]) == 0
    assert "ruleset 'one' (governance, 1 rule)\n" in capsys.readouterr().out
