"""docs/operations.md, run as written: its config, its console session (a server and two
agent processes on one machine) and its backup example."""

from __future__ import annotations

import json
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


def commands() -> list[tuple[list[str], bool]]:
    """The page's console session: each ``$ wyneos`` line's arguments, and whether it
    runs in the background (``&``)."""
    out = []
    for line in blocks("console")[0].splitlines():
        if line.startswith("$ wyneos "):
            text = line[2:].split("#")[0].rstrip()
            out.append((shlex.split(text.rstrip(" &")), text.endswith("&")))
    return out


def test_the_config_of_the_page_is_valid(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(blocks("yaml")[0])
    config = load_config(path)
    settings = ServiceSettings.from_config(config)
    assert settings == ServiceSettings()  # the page shows the defaults


def test_a_server_and_licensed_agents_as_the_page_says(tmp_path):
    """Every command of the page, in order: keys, licences paired with the agents' key
    fingerprints, the server, a token, two licensed agents (online, licensed, not
    isolated: green) and one without a licence (isolated: red)."""
    (tmp_path / "cluster.yaml").write_text(blocks("yaml")[0])
    (tmp_path / "licences").mkdir()
    server = None
    agents: dict[str, subprocess.Popen] = {}
    url = token = fingerprint = orchestrator_fp = ""

    def real(arg: str) -> str:
        if arg == "wyn_3k1...":
            return token
        if arg == "sha256:9f3c...":
            return orchestrator_fp
        if arg.startswith("sha256:") and arg.endswith("..."):
            return fingerprint
        return arg.replace("http://127.0.0.1:8420", url or "http://127.0.0.1:8420")

    try:
        for cmd, background in commands():
            assert cmd[0] == "wyneos", cmd
            args = [real(a) for a in cmd[1:]]
            if args[0] == "serve":
                server = subprocess.Popen([*WYNEOS, *args, "--port", "0", "--interval", "0.3"], cwd=tmp_path,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                line = server.stdout.readline()
                assert "listening on http://127.0.0.1:" in line, line
                url = line.split("listening on ")[1].split()[0]
            elif background:
                assert args[0] == "agent" and url, args
                node = args[args.index("--node") + 1]
                agents[node] = subprocess.Popen([*WYNEOS, *args, "--interval", "0.3", "--count", "15"], cwd=tmp_path,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            else:
                done = subprocess.run([*WYNEOS, *args], cwd=tmp_path, capture_output=True, text=True)
                assert done.returncode == 0, (args, done.stdout, done.stderr)
                if "--init" in args:
                    fingerprint = done.stdout.strip()
                    assert fingerprint.startswith("sha256:") and len(fingerprint) == 71, done.stdout
                elif args[:2] == ["enrol", "token"]:
                    token = done.stdout.strip()
                    assert token.startswith("wyn_")
                elif args[:2] == ["orchestrator-key", "show"]:
                    orchestrator_fp = done.stdout.split("fingerprint")[1].split()[0]
                    assert orchestrator_fp.startswith("sha256:") and len(orchestrator_fp) == 71, done.stdout
        assert server is not None and set(agents) == {"node-a", "node-b", "node-c"}
        with httpx.Client(base_url=url, timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                nodes = {n["id"]: n for n in client.get("/v1/nodes").json()["nodes"]}
                if len(nodes) == 3 and all(n["status"] == "online" for n in nodes.values()) \
                        and nodes["node-c"]["isolated"]:
                    break
                assert time.monotonic() < deadline, nodes
                time.sleep(0.1)
            licences = client.get("/v1/ticks/latest").json()["licences"]
            failing = {r["node_id"]: r["reason"] for r in licences if not r["valid"]}
            assert failing == {"node-c": "no_licence"}, licences
            for name in ("node-a", "node-b"):  # green: online, licensed with the key they enrolled
                node = nodes[name]
                assert not node["isolated"] and node["licence_ref"] == f"lic-{name}", node
                key = (tmp_path / "agents" / name / "node.key")
                from wyneos_core.licensing.keys import fingerprint as fp_of, load_private_key, public_bytes

                assert node["fingerprint"] == fp_of(public_bytes(load_private_key(key)))
            assert all(n["enrolled"] for n in nodes.values())
            assert "wyneos_enrolled_nodes 3.0" in client.get("/metrics").text
            assert client.get("/").status_code == 200
            # the page's backup command, against the live server (online)
            done = subprocess.run([*WYNEOS, "state", "backup", "backup-live", "--config", "cluster.yaml"],
                                  cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0 and "orchestrator.key" in done.stdout, done.stdout + done.stderr
        for name, agent in agents.items():
            out, _ = agent.communicate(timeout=30)
            assert agent.returncode == 0, out
            assert "accepted 15, refused 0" in out, out
        pinned = json.loads((tmp_path / "agents" / "node-a" / "agent-state.json").read_text())["orchestrator_keys"]
        assert len(pinned) == 1  # the key pinned in advance is the server's: it was accepted
        log = (tmp_path / "agents" / "node-c" / "actions.log").read_text()
        assert '"type": "isolate"' in log and '"status": "applied"' in log
        for name in ("node-a", "node-b"):  # never isolated (a busy machine may get reduce_load: real OS load)
            path = tmp_path / "agents" / name / "actions.log"
            entries = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
            assert not [e for e in entries if e["action"]["type"] == "isolate" and e["action"]["target"] == name]
    finally:
        for agent in agents.values():
            if agent.poll() is None:
                agent.kill()
        if server is not None:
            server.terminate()
            out = server.communicate(timeout=30)[0]
    assert server.returncode == 0, out
    assert "stopped after tick" in out
    copy = sqlite3.connect(tmp_path / "backup-live" / "state.db")
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert {r[0] for r in copy.execute("SELECT node_id FROM node_keys")} == {"node-a", "node-b", "node-c"}
    copy.close()
