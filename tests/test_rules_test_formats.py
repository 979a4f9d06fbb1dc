"""`wyneos test`: file:line:column of each failing expectation, --format junit|json for CI,
and a ruleset named on the command line runs its test file (or says where it looked)."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from wyneos_core.cli import main

RULESET = """\
ruleset: heal
stage: healing
rules:
  - id: shed
    description: overloaded nodes shed load
    when: node.load > 0.9
    then: [{reduce_load: {target_load: 0.7}}]
"""

TESTS = """\
ruleset: ../heal.yaml
tests:
  - name: a hot node sheds load
    nodes: [{id: hot, load: 0.95}]
    expect:
      actions: [{type: reduce_load, target: hot}]
  - name: a wrong expectation
    nodes: [{id: hot, load: 0.95}, {id: cool, load: 0.2}]
    expect:
      actions:
        - {type: reduce_load, target: hot}
        - {type: reduce_load, target: cool}
"""


def project(tmp_path: Path) -> Path:
    (tmp_path / "heal.yaml").write_text(RULESET)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "heal_test.yaml").write_text(TESTS)
    return tmp_path / "tests" / "heal_test.yaml"


def test_a_failing_expectation_is_named_by_file_line_and_column(tmp_path, capsys):
    tests = project(tmp_path)
    assert main(["test", str(tests)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"FAIL  {tests}:7: heal: a wrong expectation",
        f"        {tests}:12:11: expected action reduce_load on cool was not proposed",
        "1/2 ruleset test(s) passed",
    ]


def test_a_ruleset_finds_its_test_file_or_says_where_it_looked(tmp_path, capsys):
    tests = project(tmp_path)
    assert main(["test", "-v", str(tmp_path / "heal.yaml")]) == 1
    out = capsys.readouterr().out
    assert f"PASS  {tests}:3: heal: a hot node sheds load" in out
    (tmp_path / "lonely.yaml").write_text(RULESET.replace("ruleset: heal", "ruleset: lonely"))
    assert main(["test", str(tmp_path / "lonely.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'lonely.yaml'}: a ruleset, not a test file, and no test file for it was found " \
           f"(looked for {tmp_path / 'tests' / 'lonely_test.yaml'}, " in err


def test_junit_and_json_formats(tmp_path, capsys):
    tests = project(tmp_path)
    broken = tmp_path / "tests" / "broken_test.yaml"
    broken.write_text(textwrap.dedent("""\
        ruleset: ../heal.yaml
        tests:
          - name: x
            nodes: [{id: a}]
            expect: {results: [{rule: shedd, node: a}]}
        """))
    assert main(["test", "--format", "junit", str(tmp_path / "tests")]) == 1
    root = ET.fromstring(capsys.readouterr().out)
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "1" \
        and root.get("errors") == "1"
    suites = {s.get("file"): s for s in root.iter("testsuite")}
    error = suites[str(broken)].find("testcase/error")
    assert "no rule 'shedd' in ruleset 'heal'" in error.get("message") and "did you mean 'shed'?" in error.text
    cases = {c.get("name"): c for c in suites[str(tests)].iter("testcase")}
    assert cases["a hot node sheds load"].find("failure") is None and cases["a hot node sheds load"].get("line") == "3"
    failure = cases["a wrong expectation"].find("failure")
    assert failure.get("message") == f"{tests}:12:11: expected action reduce_load on cool was not proposed"
    assert main(["test", "--format", "json", str(tests)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] == 1 and doc["failed"] == 1 and doc["ok"] is False
    [wrong] = [c for c in doc["files"][0]["cases"] if not c["passed"]]
    assert wrong["line"] == 7 and wrong["failures"] == [
        {"message": "expected action reduce_load on cool was not proposed", "place": f"{tests}:12:11"}]


def test_check_names_every_mistake_of_a_test_file(tmp_path, capsys):
    project(tmp_path)
    bad = tmp_path / "tests" / "bad_test.yaml"
    bad.write_text(textwrap.dedent("""\
        ruleset: ../heal.yaml
        tests:
          - name: x
            nodez: []
            expect: {actions: [{type: reduce_lod, target: a}]}
        """))
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{bad}:4:5: tests[0].nodez: unknown field 'nodez'; did you mean 'nodes'?"
    assert err[1].startswith(f"{bad}:5:25: tests[0].expect.actions[0].type: unknown action type 'reduce_lod': "
                             "did you mean 'reduce_load'?")
