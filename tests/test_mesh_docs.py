"""The examples of docs/mesh.md run as written (twice, in the same directory)."""

from __future__ import annotations

import re
from pathlib import Path

from wyneos_core.config import Config, load_config

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_mesh_doc_python_example_runs_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [code] = re.findall(r"```python\n(.*?)```", (DOCS / "mesh.md").read_text(), re.S)
    for _ in range(2):
        exec(compile(code, "docs/mesh.md", "exec"), {"__name__": "docs_mesh"})  # noqa: S102 - our own docs


def test_mesh_doc_shows_every_consensus_setting_with_its_default():
    [text] = re.findall(r"```yaml test-config\n(.*?)```", (DOCS / "mesh.md").read_text(), re.S)
    config = load_config(text=text)
    defaults = Config.defaults()
    assert set(config["consensus"]) == set(defaults["consensus"])
    assert config["consensus"] == defaults["consensus"]
    assert config["heartbeat"]["max_observations"] == defaults["heartbeat"]["max_observations"]
