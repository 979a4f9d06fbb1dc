"""docs/security.md, section "Signed enforcement": each of its python examples runs on its
own, twice in the same directory, and its console commands exist with the options shown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "security.md"


def section() -> str:
    text = PAGE.read_text()
    start = text.index("## Signed enforcement")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", section(), re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        for index, block in enumerate(blocks):  # each example stands alone
            exec(compile(block, f"security.md (example {index + 1})", "exec"), {"__name__": "docs_security"})  # noqa: S102


def test_console_commands_exist_with_their_options(tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text("cluster: docs\nstate: {path: state.db}\n")
    run = [sys.executable, "-m", "wyneos_core.cli"]
    shown = subprocess.run([*run, "orchestrator-key", "show", "-c", str(config)], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    assert re.search(r"key id +[0-9a-f]{16}\nfingerprint +sha256:[0-9a-f]{64}", shown), shown
    pem = subprocess.run([*run, "orchestrator-key", "show", "--pem", "-c", str(config)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    rotated = subprocess.run([*run, "orchestrator-key", "rotate", "-c", str(config)], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    assert rotated.startswith("rotated: new key") and "Restart `wyneos serve`" in rotated
    assert "previous" in subprocess.run([*run, "orchestrator-key", "show", "-c", str(config)], capture_output=True,
                                        text=True, timeout=60, check=True).stdout
    helptext = subprocess.run([*run, "agent", "--help"], capture_output=True, text=True, timeout=60).stdout
    for option in re.findall(r"(--[a-z-]+)", "\n".join(line for line in section().splitlines()
                                                        if line.startswith("$ wyneos agent"))):
        assert option in helptext, option
    for option in ("--hook-type", "--timeout", "--orchestrator-key"):
        assert option in helptext
