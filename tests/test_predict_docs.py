"""docs/prediction.md: its python examples run (twice, in the same directory) and print
what the page says; its YAML example is a valid config."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from wyneos_core.config import load_config

PAGE = Path(__file__).resolve().parents[1] / "docs" / "prediction.md"


def test_python_examples_run_twice_and_print_what_they_say(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 4
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        namespace: dict = {"__name__": "docs_prediction"}
        for index, block in enumerate(blocks):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(block, f"prediction.md (example {index + 1})", "exec"), namespace)  # noqa: S102
            said = [line.split("#", 1)[1].split()[0] for line in block.splitlines()
                    if line.startswith("print(") and "#" in line]
            printed = [line.split()[0] for line in out.getvalue().splitlines()]
            assert printed[:len(said)] == said or all(p.startswith(s) for p, s in zip(printed, said)), \
                (index, printed, said)


def test_yaml_example_is_a_valid_config():
    [block] = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.S)
    config = load_config(text=block)
    assert [m["name"] for m in config["telemetry"]["metrics"]] == ["cpu", "disk_used", "temperature"]
    assert [m["seasonal"] for m in config["telemetry"]["metrics"]] == ["daily", "none", "none"]
