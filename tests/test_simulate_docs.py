"""The examples of docs/healing.md and docs/simulation.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wyneos_core.config import Config, load_config

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```(\w+) ([\w-]+)\n(.*?)^```", re.S | re.M)


def blocks(name: str, lang: str, mark: str) -> list[str]:
    found = [body for la, ma, body in FENCE.findall((DOCS / name).read_text()) if la == lang and ma == mark]
    assert found, f"no ```{lang} {mark} block in {name}"
    return found


def test_simulation_doc_scenario_and_python_example_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [scenario] = blocks("simulation.md", "yaml", "test-scenario")
    (tmp_path / "docs-example.yaml").write_text(scenario)  # the page says: saved as docs-example.yaml
    for _ in range(2):  # twice in the same directory, each block a complete program
        for code in blocks("simulation.md", "python", "test"):
            exec(compile(code, "docs/simulation.md", "exec"), {"__name__": "docs_simulation"})  # noqa: S102
        assert "scenario docs-example: 40 nodes" in capsys.readouterr().out


def test_healing_doc_config_is_valid_and_documents_every_setting():
    [text] = blocks("healing.md", "yaml", "test-config")
    config = load_config(text=text)
    defaults = Config.defaults()
    for section in ("healing", "decide", "propagate"):
        assert set(config[section]) == set(defaults[section]), section  # every setting is shown
    assert config["healing"]["overload_ticks"] == 2
    # every other value shown is the default (the doc says so)
    for section in ("healing", "decide", "propagate"):
        for key, value in config[section].items():
            if (section, key) != ("healing", "overload_ticks"):
                assert value == defaults[section][key], (section, key)


@pytest.mark.parametrize("code", blocks("healing.md", "python", "test"))
def test_healing_doc_python_example_runs(code, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # twice in the same directory
        exec(compile(code, "docs/healing.md", "exec"), {})  # noqa: S102 - our own docs
        assert "in_force" in capsys.readouterr().out
