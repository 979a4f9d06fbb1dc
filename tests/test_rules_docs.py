"""The examples of docs/rulesets.md, run: rulesets load, tests pass, refusals refuse, code runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from wyneos_core.config import load_config
from wyneos_core.rules.loader import RulesetError, load_ruleset
from wyneos_core.rules.testing import run_test_file

DOC = Path(__file__).resolve().parent.parent / "docs" / "rulesets.md"
FENCE = re.compile(r"^```(\w+)(?: ([\w-]+))?\n(.*?)^```", re.S | re.M)


def blocks(kind: str) -> list[str]:
    return [body for lang, tag, body in FENCE.findall(DOC.read_text()) if f"{lang} {tag}".strip() == kind]


def _write_rulesets(tmp_path: Path) -> None:
    for body in blocks("yaml ruleset"):
        name = re.search(r"^# (\S+\.yaml)", body, re.M).group(1)
        (tmp_path / name).write_text(body)


def test_the_doc_has_examples_of_every_kind() -> None:
    assert len(blocks("yaml ruleset")) >= 2
    assert len(blocks("yaml ruleset-test")) >= 2
    assert len(blocks("yaml refused")) >= 3
    assert len(blocks("python")) >= 1
    assert len(blocks("yaml config")) == 1


def test_ruleset_examples_load(tmp_path: Path) -> None:
    _write_rulesets(tmp_path)
    for path in sorted(tmp_path.glob("*.yaml")):
        assert load_ruleset(path).rules


def test_ruleset_test_examples_pass(tmp_path: Path) -> None:
    _write_rulesets(tmp_path)
    for index, body in enumerate(blocks("yaml ruleset-test")):
        path = tmp_path / f"doc_{index}_test.yaml"
        path.write_text(body)
        _, outcomes = run_test_file(path)
        assert outcomes and all(c.passed for c in outcomes), [c.failures for c in outcomes]


def test_refused_examples_are_refused_and_native_accepts_the_durable_one() -> None:
    for body in blocks("yaml refused"):
        with pytest.raises(RulesetError):
            load_ruleset("doc.yaml", text=body)
        if "engine: durable" in body:
            assert load_ruleset("doc.yaml", text=body.replace("engine: durable", "engine: native")).rules


def test_python_examples_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # twice in the same directory
        for body in blocks("python"):
            exec(compile(body, str(DOC), "exec"), {})  # the doc's own example code, not user input


def test_config_example_is_a_valid_config_section(tmp_path: Path) -> None:
    (body,) = blocks("yaml config")
    data = yaml.safe_load(body)
    text = yaml.safe_dump({"rulesets": {k: v for k, v in data["rulesets"].items() if k != "paths"}})
    config = load_config(text=text)
    assert config["rulesets"]["engine"] == "native" and config["rulesets"]["durable_timeout"] == 60
