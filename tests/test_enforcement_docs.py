"""docs/enforcement.md: its examples (python blocks and the shell session, in page order)
run twice in the same directory and print what the page says; its YAML blocks are valid."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from wyneos_core.config import load_config

PAGE = Path(__file__).resolve().parents[1] / "docs" / "enforcement.md"


def test_the_examples_run_twice_as_written(tmp_path, monkeypatch):
    text = PAGE.read_text()
    blocks = re.findall(r"```(python|sh enforcement-example)\n(.*?)```", text, re.S)
    [expected] = re.findall(r"```text enforcement-output\n(.*?)```", text, re.S)
    assert [kind for kind, _ in blocks] == ["python", "sh enforcement-example", "python"]
    bindir = Path(sys.executable).parent
    monkeypatch.chdir(tmp_path)
    for run in (1, 2):
        namespace: dict = {"__name__": "docs_enforcement"}
        for index, (kind, block) in enumerate(blocks):
            if kind == "python":
                exec(compile(block, f"enforcement.md (example {index + 1}, run {run})", "exec"), namespace)  # noqa: S102
                continue
            script = re.sub(r"^wyneos ", f"{bindir}/wyneos ", block, flags=re.M)
            out = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                                 timeout=120, env={"PATH": "/usr/bin:/bin", "USER": "docs"})
            assert out.returncode == 0, out.stderr
            assert out.stdout == expected, out.stdout


def test_the_yaml_examples_are_valid_configs():
    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) >= 4
    for block in blocks:
        load_config(text=block)  # raises ConfigError naming the field if the page drifts from the schema
