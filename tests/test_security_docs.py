"""docs/security.md, run as written: its config (a server for the open network, which
needs its read token) and its Python example."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from wyneos_core.config import ConfigError, load_config
from wyneos_core.service.settings import ServiceSettings

PAGE = Path(__file__).resolve().parents[1] / "docs" / "security.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(), re.S)


def test_the_open_network_config_needs_its_owner_only_token_file(tmp_path):
    (tmp_path / "edge.yaml").write_text(blocks("yaml")[0])
    with pytest.raises(ConfigError, match="read_token_file"):  # the file is not there yet
        ServiceSettings.from_config(load_config(tmp_path / "edge.yaml"))
    token = tmp_path / "read-token"
    token.write_text("an-operator-token-of-32-characters\n")
    os.chmod(token, 0o600)
    settings = ServiceSettings.from_config(load_config(tmp_path / "edge.yaml"))
    assert settings.host == "0.0.0.0" and settings.read_token == "an-operator-token-of-32-characters"
    assert settings.max_connections == 8192 and settings.heartbeat_rate == 2.0


def test_every_python_example_runs_on_its_own_twice_in_the_same_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for index, block in enumerate(blocks("python")):
        for _ in range(2):
            exec(compile(block, f"security.md (example {index + 1})", "exec"), {"__name__": "docs_security"})  # noqa: S102
    assert capsys.readouterr().out.count("not a regular file (a FIFO)") == 2
