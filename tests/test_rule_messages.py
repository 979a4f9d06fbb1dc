"""Rule messages for the mistakes people make most: each names the file, line and column
and says what to write instead (issue 21 item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wyneos_core.cli import main
from wyneos_core.rules.loader import RulesetError, load_ruleset

HEAD = "ruleset: t\nstage: {stage}\ndescription: d\nrules:\n  - id: r1\n    description: d\n"
#: the expression of rule r1 starts on line 7, column 14 (after "    require: ")
LINE, START = 7, 14


def errors_of(tmp_path: Path, body: str, stage: str = "governance", name: str = "r.yaml") -> list[RulesetError]:
    path = tmp_path / name
    path.write_text(HEAD.format(stage=stage) + body, encoding="utf-8", errors="surrogatepass")
    found: list[RulesetError] = []
    with pytest.raises(RulesetError):
        load_ruleset(path, errors=found)
    return found


def printed(capsys) -> str:
    out = capsys.readouterr()
    return out.out + out.err


def one_error(tmp_path: Path, body: str, stage: str = "governance") -> RulesetError:
    [error] = errors_of(tmp_path, body, stage)
    return error


def test_a_trailing_and_is_named_where_it_stands(tmp_path):
    e = one_error(tmp_path, "    require: node.load < 0.9 and\n")
    assert e.reason == ("syntax error: the expression ends with 'and': add the condition that follows it, "
                        "or remove 'and'")
    assert (e.line, e.column, e.field) == (LINE, START + len("node.load < 0.9 "), "rules[0].require")


def test_double_ampersand_says_use_and(tmp_path):
    e = one_error(tmp_path, '    require: node.id == "a&&b" && node.load < 0.9\n')
    assert e.reason == "syntax error: '&&' is not an operator here: use 'and'"
    assert (e.line, e.column) == (LINE, START + len('node.id == "a&&b" '))  # not the && inside the string


def test_percent_says_the_number_to_write(tmp_path):
    e = one_error(tmp_path, "    require: node.load < 90%\n")
    assert e.reason.startswith("syntax error: percent is not an operator: 0.9")
    assert (e.line, e.column) == (LINE, START + len("node.load < "))
    e = one_error(tmp_path, '    require: node.load < 85.5% and node.status == "online"\n')
    assert e.reason.startswith("syntax error: percent is not an operator: 0.855")


def test_a_status_it_never_has_lists_the_statuses(tmp_path):
    e = one_error(tmp_path, '    require: node.status == "Online"\n')
    assert "status is one of online, stale, offline, unknown; did you mean 'online'?" in e.reason
    assert (e.line, e.column) == (LINE, START + len("node.status == "))
    e = one_error(tmp_path, '    require: node.status in ["online", "gone"]\n')
    assert "'gone' is never a node's status: status is one of online, stale, offline, unknown" in e.reason
    assert (e.line, e.column) == (LINE, START + len('node.status in ["online", '))


def test_a_number_field_against_a_string_is_an_error_in_check_and_validate(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(HEAD.format(stage="governance") + '    require: node.load < "0.9"\n')
    want = (f"{path}:{LINE}:{START + len('node.load < ')}: rules[0].require: node.load is a number and '0.9' is a "
            "string: they are never equal or ordered, so the comparison is never true: write 0.9 without quotes")
    assert main(["check", str(path)]) == 1
    assert want in printed(capsys)
    assert main(["validate", str(path)]) == 1
    assert want in printed(capsys)


def test_a_number_as_the_condition_does_not_suggest_quoting_true(tmp_path):
    e = one_error(tmp_path, "    require: 0.9\n")
    assert "True" not in e.reason
    assert e.reason == ("expected a string, got 0.9 (a condition compares a field with a value, e.g. "
                        "require: node.load < 0.9; YAML read the bare number as a number)")
    assert (e.line, e.column, e.field) == (LINE, 5, "rules[0].require")


def test_a_ruleset_name_says_which_characters_are_allowed(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("ruleset: My Rules\n" + HEAD.format(stage="governance").split("\n", 1)[1]
                    + "    require: node.load < 0.9\n")
    found: list[RulesetError] = []
    with pytest.raises(RulesetError):
        load_ruleset(path, errors=found)
    [e] = found
    assert "^[" not in e.reason and "match" not in e.reason  # no raw regular expression
    assert e.reason == ("'My Rules' is not allowed: 1 to 64 lowercase letters, digits, '.', '_' or '-', starting "
                        "with a letter or digit (no spaces or capitals); e.g. 'my-rules'")
    assert (e.line, e.field) == (1, "ruleset")


def test_then_with_a_bare_action_type_suggests_the_mapping(tmp_path):
    e = one_error(tmp_path, "    when: node.load > 0.9\n    then: isolate\n", stage="healing")
    assert "isolate: {}" in e.reason
    assert (e.line, e.field) == (LINE + 1, "rules[0].then")
    e = one_error(tmp_path, "    when: node.load > 0.9\n    then: [isolate]\n", stage="healing")
    assert e.reason.endswith("(write the action as a mapping from its type to its params: - isolate: {})")
    assert (e.line, e.field) == (LINE + 1, "rules[0].then[0]")


def test_a_wrong_ruleset_path_in_a_test_file_is_located(tmp_path, capsys):
    (tmp_path / "policy.yaml").write_text(HEAD.format(stage="governance") + "    require: node.load < 0.9\n")
    tests = tmp_path / "policy.test.yaml"
    tests.write_text("# tests of the policy\nruleset: polcy.yaml\ntests:\n  - name: a\n    nodes: [{id: n1, load: 0.5}]\n"
                     "    expect: {results: [{rule: r1, node: n1, passed: true}]}\n")
    assert main(["test", str(tests)]) == 1
    out = printed(capsys)
    assert (f"{tests}:2:1: ruleset: no ruleset file 'polcy.yaml' (looked for {tmp_path / 'polcy.yaml'}; a path is "
            "relative to the test file); did you mean 'policy.yaml'?") in out
    assert main(["validate", str(tests)]) == 1
    assert f"{tests}:2:1: ruleset: no ruleset file 'polcy.yaml'" in printed(capsys)


def test_a_required_plugin_setting_with_the_section_missing_is_located(tmp_path):
    from wyneos_core import hookimpl
    from wyneos_core.config import ConfigError, load_config
    from wyneos_core.tick import Orchestrator

    class Bundler:
        __wyneos_name__ = "bundler"
        WYNEOS_SETTINGS_SCHEMA = {"type": "object", "required": ["bundle"], "properties": {"bundle": {"type": "string"}}}

        @hookimpl
        def wyneos_check_config(self, config):  # reads the setting its schema requires
            return [] if config["plugins"]["settings"]["bundler"]["bundle"] else [("plugins", "empty")]

    config = tmp_path / "c.yaml"
    config.write_text("cluster: c\nnodes: [{id: a}]\nplugins:\n  disable: [licence]\n")
    with pytest.raises(ConfigError) as info:
        Orchestrator(load_config(config), plugins=[Bundler()], load_entrypoints=False, store=False)
    assert "KeyError" not in str(info.value)
    [e] = info.value.errors
    assert (e.file, e.line, e.field) == (str(config), 3, "plugins.settings.bundler")
    assert e.reason == ("plugin 'bundler' needs this section: 'bundle' is required (plugins.settings.bundler is "
                        "missing)")


@pytest.mark.parametrize("where", ["require", "description", "id"])
def test_a_lone_surrogate_does_not_hide_the_next_rules_mistake(tmp_path, where):
    first = {"require": '  - id: r0\n    description: d\n    require: "node.id == \\"\\ud800\\""\n',
             "description": '  - id: r0\n    description: "bad \\ud800"\n    require: node.load < 1\n',
             "id": '  - id: "r\\ud800"\n    description: d\n    require: node.load < 1\n'}[where]
    path = tmp_path / "r.yaml"
    path.write_text("ruleset: t\nstage: governance\ndescription: d\nrules:\n" + first
                    + "  - id: r2\n    description: d\n    require: node.lod < 0.9\n")
    found: list[RulesetError] = []
    with pytest.raises(RulesetError):
        load_ruleset(path, errors=found)
    assert [(e.field, e.line) for e in found] == [(f"rules[0].{where}", {"id": 5, "description": 6, "require": 7}[where]),
                                                 ("rules[1].require", 10)]
    assert "lone surrogate U+D800" in found[0].reason and "\ud800" not in found[0].reason  # never echoed
    assert "node has no field 'lod'; did you mean 'load'?" in found[1].reason
