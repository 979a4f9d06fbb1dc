"""Run the examples in the docs: every ```python block of the pages below, in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"

#: pages whose python blocks form one program, run top to bottom.
PAGES = ["architecture.md", "quickstart.md", "configuration.md"]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


@pytest.mark.parametrize("page", PAGES)
def test_python_examples_run(page, tmp_path, monkeypatch):
    """Twice in the same directory: a reader runs an example again, with the files the first
    run left (a state file, keys, reports) still there."""
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no python examples"
    monkeypatch.chdir(tmp_path)
    for run in (1, 2):
        namespace: dict = {"__name__": f"docs_{page.replace('.', '_')}"}
        for index, block in enumerate(blocks):
            code = compile(block, f"{page} (example {index + 1}, run {run})", "exec")
            exec(code, namespace)  # noqa: S102 - our own documentation, not user input


@pytest.mark.parametrize("page", ["quickstart.md", "writing-plugins.md"])
def test_yaml_config_examples_are_valid_configs(page):
    from wyneos_core.config import load_config

    blocks = re.findall(r"```yaml\n(.*?)```", (DOCS / page).read_text(), re.S)
    assert blocks, f"{page} has no yaml examples"
    for block in blocks:
        load_config(text=block)  # raises ConfigError naming the field if the docs drift from the schema
