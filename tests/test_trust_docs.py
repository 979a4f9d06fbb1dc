"""docs/trust.md: its python examples run (twice, in the same directory), its YAML
examples are valid (config sections, admission rules, rulesets)."""

from __future__ import annotations

import re
from pathlib import Path

from wyneos_core.config import load_config
from wyneos_core.rules.loader import load_ruleset
from wyneos_core.trust.admission import load_admission

PAGE = Path(__file__).resolve().parents[1] / "docs" / "trust.md"


def test_python_examples_run_twice(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        namespace: dict = {"__name__": "docs_trust"}
        for index, block in enumerate(blocks):
            exec(compile(block, f"trust.md (example {index + 1})", "exec"), namespace)  # noqa: S102


def test_yaml_examples_are_valid(tmp_path):
    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.S)
    kinds = set()
    for index, block in enumerate(blocks):
        if block.startswith("admission:"):
            path = tmp_path / f"admission-{index}.yaml"
            path.write_text(block)
            load_admission(path, 3)
            kinds.add("admission")
        elif block.startswith("ruleset:"):
            path = tmp_path / f"ruleset-{index}.yaml"
            path.write_text(block)
            load_ruleset(path)
            kinds.add("ruleset")
        else:
            load_config(text=block)
            kinds.add("config")
    assert kinds == {"admission", "ruleset", "config"}


def test_the_documented_defaults_are_the_schema_defaults():
    documented = re.search(r"```yaml\n(trust:\n  forgetting.*?)```", PAGE.read_text(), re.S).group(1)
    assert load_config(text=documented)["trust"] == load_config(text="{}")["trust"]
    import yaml

    shown = yaml.safe_load(documented)["trust"]
    assert set(shown) == set(load_config(text="{}")["trust"])  # every setting is shown
