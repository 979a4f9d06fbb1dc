"""docs/drift.md: its python examples run (twice, in the same directory), its YAML
examples are valid (config sections and the ruleset)."""

from __future__ import annotations

import re
from pathlib import Path

from wyneos_core.config import load_config
from wyneos_core.rules.loader import load_ruleset

PAGE = Path(__file__).resolve().parents[1] / "docs" / "drift.md"


def test_python_examples_run_twice(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        namespace: dict = {"__name__": "docs_drift"}
        for index, block in enumerate(blocks):
            exec(compile(block, f"drift.md (example {index + 1})", "exec"), namespace)  # noqa: S102


def test_yaml_examples_are_valid(tmp_path):
    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.S)
    kinds = set()
    for index, block in enumerate(blocks):
        if block.startswith("ruleset:"):
            path = tmp_path / f"ruleset-{index}.yaml"
            path.write_text(block)
            load_ruleset(path)
            kinds.add("ruleset")
        else:
            (tmp_path / "manifests").mkdir(exist_ok=True)
            (tmp_path / "c.yaml").write_text(block)
            config = load_config(tmp_path / "c.yaml")
            from wyneos_core.builtin.drift import wyneos_check_config

            assert wyneos_check_config(config) == []
            kinds.add("config")
    assert kinds == {"ruleset", "config"}
