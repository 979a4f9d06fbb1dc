"""`wyneos validate FILE...`: every mistake at once, located, with "did you mean", nothing run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wyneos_core import hookimpl
from wyneos_core.cli import main
from wyneos_core.plugins import PluginLoadError, PluginManager


def wyneos(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wyneos_core.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def lines_of(capsys) -> list[str]:  # noqa: ANN001
    return capsys.readouterr().out.splitlines()


def test_a_config_with_three_typos_is_refused_in_one_run_with_every_mistake(tmp_path, capsys):
    write(tmp_path / "issuer.pub", "")
    config = write(tmp_path / "cluster.yaml", """\
        hearbeat: {interval: 3}
        mesh: {topolgy: ring}
        nodes: [{id: a, licnce: x}]
        licence: {trusted_keys: [isuer.pub], sources: [file, htp]}
        plugins: {disable: [healnig]}
        """)
    assert main(["validate", str(config)]) == 1
    out = lines_of(capsys)
    assert out[:3] == [
        f"{config}:1:1: hearbeat: unknown field 'hearbeat'; did you mean 'heartbeat'?",
        f"{config}:2:8: mesh.topolgy: unknown field 'topolgy'; did you mean 'topology'?",
        f"{config}:3:17: nodes[0].licnce: unknown field 'licnce'; did you mean 'licence'?",
    ]
    # the rest of the file is still checked by the plugins that would read it
    assert out[3].startswith(f"{config}:4:26: licence.trusted_keys[0]: no such key file or directory: ")
    assert out[3].endswith("isuer.pub; did you mean 'issuer.pub'?")
    assert out[4].startswith(f"{config}:4:54: licence.sources[1]: no loaded plugin offers a licence source named "
                             "'htp' (available: file")
    assert out[5].startswith("warning: plugins.disable names 'healnig', which is not installed here")
    assert out[5].endswith("did you mean 'healing'?")
    assert out[-1] == "0 file(s) valid, 1 with 5 error(s)"


def test_nothing_runs_and_nothing_is_written(tmp_path):
    config = write(tmp_path / "cluster.yaml", """\
        nodes: [{id: a}]
        state: {path: data/state.db}
        report: {json_path: data/last.json}
        rulesets: {paths: ["builtin:"]}
        """)
    out = wyneos("validate", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    from wyneos_core.enforcement.check import UNKEYED

    # no trusted key: the licence step enforces nothing, and validate says so (docs/enforcement.md)
    assert out.stdout.splitlines() == [f"warning: {UNKEYED}", f"ok    {config} (config, 3 ruleset file(s) it names)",
                                       "1 file(s) valid, 0 with 0 error(s)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"]  # no state, no report, no .wyneos


def test_a_ruleset_reports_every_rule_and_top_level_mistake(tmp_path, capsys):
    ruleset = write(tmp_path / "heal.yaml", """\
        ruleset: Heal Me
        stage: healin
        rules:
          - id: a
            description: x
            when: node.load > 1
            then: [{isolate: {}}]
        """)
    assert main(["validate", str(ruleset)]) == 1
    out = lines_of(capsys)
    # the bad stage no longer hides the bad name
    assert out[0] == (f"{ruleset}:1:1: ruleset: 'Heal Me' is not allowed: 1 to 64 lowercase letters, digits, '.', '_' "
                      "or '-', starting with a letter or digit (no spaces or capitals); e.g. 'heal-me'")
    assert out[1].startswith(f"{ruleset}:2:1: stage: 'healin' is not one of") and \
        out[1].endswith("did you mean 'healing'?")


#: condition -> (hint, the part of the condition the error points at)
SUGGESTIONS = {
    "node.lod > 0.9": ("node has no field 'lod'; did you mean 'load'?", "node.lod"),
    "node.load > 0.9 and true": ("unknown name 'true'; did you mean 'True'?", "true"),
    "node.status = \"online\"": ("did you mean '==' (comparison) instead of '='?", "="),
    "lenght(node.metadata) > 2": ("unknown function 'lenght'; did you mean 'length'?", "lenght"),
    "nod.load > 1": ("unknown name 'nod'; did you mean 'node'?", "nod"),
}


def test_did_you_mean_in_expressions_action_types_and_hooks(tmp_path, capsys):
    rules = "".join(f"  - id: r{i}\n    description: d\n    when: '{cond}'\n    then: [{{isolate: {{}}}}]\n"
                    for i, cond in enumerate(SUGGESTIONS))
    rules += "  - id: typo\n    description: d\n    when: node.load > 1\n    then: [{isolat: {}}]\n"
    ruleset = write(tmp_path / "r.yaml", "ruleset: r\nstage: healing\nrules:\n" + rules)
    assert main(["validate", "--format", "json", str(ruleset)]) == 1
    [doc] = json.loads(capsys.readouterr().out)["files"]
    errors = doc["errors"]
    assert len(errors) == len(SUGGESTIONS) + 1  # every rule's mistake, none hidden by another
    for index, (error, (cond, (hint, part))) in enumerate(zip(errors, SUGGESTIONS.items())):
        assert hint in error["reason"], (cond, error)
        # "    when: '" is 11 characters: the expression starts in column 12 of its line
        assert error["file"] == str(ruleset) and error["line"] == 6 + 4 * index, (cond, error)
        assert error["column"] == 12 + cond.index(part), (cond, error)
    assert errors[-1]["field"] == "rules[5].then[0].isolat"
    assert "unknown action type 'isolat': did you mean 'isolate'?" in errors[-1]["reason"]

    class Plugin:
        @hookimpl
        def wyneos_healing(self):  # noqa: ANN201
            return []

        def wyneos_heal(self):  # noqa: ANN201
            return []

    with pytest.raises(PluginLoadError, match="'wyneos_heal' matches no wyneos hook; did you mean 'wyneos_healing'?"):
        PluginManager().register(Plugin(), "mine")


def test_rule_ids_in_test_files_and_json_output(tmp_path):
    write(tmp_path / "names.yaml", """\
        ruleset: names
        stage: governance
        rules:
          - id: naming
            description: nodes have a region
            require: node.metadata.region is not missing
        """)
    tests = write(tmp_path / "names.test.yaml", """\
        ruleset: names.yaml
        tests:
          - name: a node without a region fails
            nodes: [{id: n1, metadata: {}}]
            expect:
              results: [{rule: namig, node: n1, passed: false}]
        """)
    out = wyneos("validate", "--format", "json", str(tests), cwd=tmp_path)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["ok"] is False and doc["files"][0]["kind"] == "ruleset-tests"
    [error] = doc["files"][0]["errors"]
    assert error["line"] == 6 and error["field"] == "tests[0].expect.results[0].rule"
    assert error["reason"] == f"no rule 'namig' in ruleset 'names' ({tmp_path / 'names.yaml'}); did you mean 'naming'?"


def test_ruleset_checker_from_issue_9(tmp_path):
    """A non-string or too-long require hides no other rule's error; a too-long expression is
    not echoed; a lone surrogate is a located error, and `wyneos tick` exits cleanly."""
    long = "node.load > 1 and " * 60_000 + "True"  # a 1 MB expression
    ruleset = tmp_path / "gov.yaml"
    ruleset.write_text("ruleset: gov\nstage: governance\nrules:\n"
                       "  - {id: a, description: d, require: 42}\n"
                       f"  - {{id: b, description: d, require: '{long}'}}\n"
                       "  - {id: c, description: d, require: node.id == 'x'}\n"
                       "  - {id: d, description: d, require: node.lod > 1}\n")
    surrogate = tmp_path / "surrogate.yaml"
    surrogate.write_text("ruleset: gov\nstage: governance\nrules:\n"
                         "  - {id: c, description: d, require: \"node.id == '\\ud800'\"}\n")
    out = wyneos("validate", str(ruleset), str(surrogate), cwd=tmp_path)
    lines = out.stdout.splitlines()
    assert out.returncode == 1 and max(len(line) for line in lines) < 400  # nothing echoed whole
    column = len("  - {id: a, description: d, ") + 1  # the key the value belongs to
    assert lines[0] == f"{ruleset}:4:{column}: rules[0].require: expected a string, got 42 (a condition compares " \
                       "a field with a value, e.g. require: node.load < 42; YAML read the bare number as a number)"
    assert lines[1] == f"{ruleset}:5:{column}: rules[1].require: is {len(long)} characters long, more than 2000"
    assert lines[2].startswith(f"{ruleset}:7:") and "did you mean 'load'?" in lines[2]
    # the surrogate is named by place, never echoed (the file is refused as it is read)
    assert lines[3].startswith(f"{surrogate}:4:") and "not valid Unicode text" in lines[3]
    assert "\\ud800" not in lines[3] and "codec" not in out.stdout + out.stderr
    config = write(tmp_path / "c.yaml", f"nodes: [{{id: a}}]\nrulesets: {{paths: [{ruleset}]}}\n"
                                        "state: {path: ':memory:'}\nreport: {json_path: null}\n")
    tick = wyneos("tick", "--config", str(config), cwd=tmp_path)
    assert tick.returncode == 2 and "Traceback" not in tick.stderr and "UnicodeEncodeError" not in tick.stderr
    assert f"{ruleset}:4:{column}: rules[0].require: expected a string, got 42 (" in tick.stderr
    config.write_text(config.read_text().replace(str(ruleset), str(surrogate)))
    tick = wyneos("tick", "--config", str(config), cwd=tmp_path)
    assert tick.returncode == 2 and "Traceback" not in tick.stderr and f"{surrogate}:4:" in tick.stderr


def test_scenarios_are_recognised_and_checked(tmp_path, capsys):
    scenario = write(tmp_path / "s.yaml", """\
        scenario: x
        nodes: 10
        ticks: 5
        faults:
          - {kind: crsh, at: 2, count: 1}
        config: {heartbeat: {stale_afer: 3}}
        """)
    assert main(["validate", str(scenario), str(tmp_path / "missing.yaml")]) == 1
    out = lines_of(capsys)
    assert out[0] == f"{tmp_path / 'missing.yaml'}: no such file or directory"
    assert out[1].startswith(f"{scenario}:5:6: faults[0].kind: 'crsh' is not one of") and \
        out[1].endswith("did you mean 'crash'?")
    assert out[2] == f"{scenario}:6:22: config.heartbeat.stale_afer: unknown field 'stale_afer'; " \
                     "did you mean 'stale_after'?"


def test_shipped_files_are_valid(capsys):
    import wyneos_core

    root = Path(wyneos_core.__file__).parent
    assert main(["validate", str(root / "shipped_rulesets"), str(root / "shipped_scenarios"),
                 str(root / "demo" / "demo.yaml")]) == 0, capsys.readouterr().out


def test_service_settings_are_checked_as_serve_would(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", "nodes: [{id: a}]\nplugins: {settings: {service: {prot: 80}}}\n")
    assert main(["validate", str(config)]) == 1
    line = lines_of(capsys)[0]
    assert line.startswith(f"{config}:2:32: plugins.settings.service.prot: unknown setting") and \
        line.endswith("did you mean 'port'?")


def test_every_semantic_mistake_of_a_scenario_is_reported_at_once(tmp_path, capsys):
    scenario = write(tmp_path / "s.yaml", """\
        scenario: x
        nodes: 10
        ticks: 5
        faults:
          - {kind: crash, at: 9, count: 1}
          - {kind: crash, at: 2, until: 1, count: 40}
          - {kind: crash, at: 2, nodes: [n-0099]}
        load: {min: 0.5, max: 0.2}
        """)
    assert main(["validate", str(scenario)]) == 1
    out = lines_of(capsys)
    # one line per mistake, in file order, each with its line
    assert [line.removeprefix(f"{scenario}:").split(":")[0] for line in out[:5]] == ["5", "6", "6", "7", "8"]
    text = "\n".join(out)
    for expected in ("faults[0].at: tick 9 is after the last tick (5)", "faults[1].until: must be after at (2)",
                     "faults[1].count: 40 nodes asked for, the cluster has 10", "faults[2].nodes: unknown node 'n-0099'",
                     "load.max: must be at least load.min (0.5)"):
        assert expected in text
    # the simulator itself refuses the same file with the same list, in one run
    run = wyneos("simulate", str(scenario), "--out", "out", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.count("wyneos: error:") == 5, run.stderr
