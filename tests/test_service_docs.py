"""docs/operations.md, run as written: its config, its console session (a server and two
agent processes on one machine) and its backup example."""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from wyneos_core.config import load_config
from wyneos_core.service.settings import ServiceSettings

pytestmark = pytest.mark.slow

PAGE = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
WYNEOS = [sys.executable, "-m", "wyneos_core.cli"]


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(), re.S)


def commands() -> list[list[str]]:
    out = []
    for line in blocks("console")[0].splitlines():
        if line.startswith("$ wyneos "):
            out.append(shlex.split(line[2:].split("#")[0].rstrip(" &")))
    return out


def test_the_config_of_the_page_is_valid(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(blocks("yaml")[0])
    config = load_config(path)
    settings = ServiceSettings.from_config(config)
    assert settings == ServiceSettings()  # the page shows the defaults


def test_a_server_and_two_agents_as_the_page_says(tmp_path):
    (tmp_path / "cluster.yaml").write_text(blocks("yaml")[0])
    serve, token_cmd, agent_a, agent_b = commands()
    assert serve[:2] == ["wyneos", "serve"] and agent_a[:2] == ["wyneos", "agent"]
    server = subprocess.Popen([*WYNEOS, *serve[1:], "--port", "0", "--interval", "0.3"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    agents = []
    try:
        line = server.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.split("listening on ")[1].split()[0]
        token = subprocess.run([*WYNEOS, *token_cmd[1:]], cwd=tmp_path, capture_output=True, text=True,
                               check=True).stdout.strip()
        assert token.startswith("wyn_")
        for cmd in (agent_a, agent_b):
            args = [a.replace("http://127.0.0.1:8420", url).replace("wyn_3k1...", token) for a in cmd[1:]]
            agents.append(subprocess.Popen([*WYNEOS, *args, "--interval", "0.3", "--count", "8"], cwd=tmp_path,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        with httpx.Client(base_url=url, timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                nodes = {n["id"]: n for n in client.get("/v1/nodes").json()["nodes"]}
                if len(nodes) == 2 and all(n["status"] == "online" for n in nodes.values()):
                    break
                assert time.monotonic() < deadline, nodes
                time.sleep(0.1)
            assert set(nodes) == {"node-a", "node-b"}
            assert all(n["enrolled"] and n["fingerprint"].startswith("sha256:") for n in nodes.values())
            assert "wyneos_enrolled_nodes 2.0" in client.get("/metrics").text
            assert client.get("/").status_code == 200
            # the page's backup example, against the live server
            namespace: dict = {}
            exec(compile(blocks("python")[0], "operations.md", "exec"), namespace)  # noqa: S102 - our docs
            namespace["backup_state"](str(tmp_path / "state.db"), str(tmp_path / "backup.db"))
        for agent in agents:
            out, _ = agent.communicate(timeout=30)
            assert agent.returncode == 0, out
            assert "accepted 8, refused 0" in out, out
        assert (tmp_path / "agents" / "node-a" / "node.key").exists()
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
        server.terminate()
        out = server.communicate(timeout=30)[0]
    assert server.returncode == 0, out
    assert "stopped after tick" in out
    copy = sqlite3.connect(tmp_path / "backup.db")
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert {r[0] for r in copy.execute("SELECT node_id FROM node_keys")} == {"node-a", "node-b"}
    copy.close()
