"""docs/licences.md: its python examples run as one program, its config examples load,
its shell examples run through the real CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from wyneos_core.cli import main
from wyneos_core.config import load_config

PAGE = Path(__file__).resolve().parents[1] / "docs" / "licences.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(), re.S)


def test_licences_page_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    yaml_blocks = blocks("yaml")
    assert len(yaml_blocks) == 3
    (tmp_path / "wyneos.yaml").write_text(yaml_blocks[0])  # the page's main configuration
    for text in yaml_blocks[1:]:
        load_config(text=text)  # the source plugins' examples are valid configs too
    python = blocks("python")
    assert len(python) >= 5
    for run in (1, 2):  # a second time in the same directory, with what the first run left
        namespace: dict = {"__name__": "docs_licences"}
        for index, block in enumerate(python):
            exec(compile(block, f"licences.md (python example {index + 1}, run {run})", "exec"),  # noqa: S102
                 namespace)
    shell = [line for block in blocks("sh") for line in block.splitlines() if line.startswith("wyneos licence")]
    assert len(shell) == 5
    outputs = {}
    for line in shell:
        code = main(shlex.split(line)[1:])
        out = capsys.readouterr()
        assert code == 0, (line, out)
        outputs[shlex.split(line)[2]] = out.out
    assert outputs["verify"].startswith("VALID ok")
    assert "seats" in outputs["inspect"] and "signature     valid" in outputs["inspect"]
    assert "version 1" in outputs["revoke"] and (tmp_path / "cli-revocations.json").exists()
