"""`wyneos get | describe | watch` against a real server with an operator token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from service_helpers import Node, Quarantine, add_token, make_service, wait_for, write_config
from wyneos_core.service.server import ServerThread

TOKEN = "an-operator-token-long-enough-0123456789"
NODES = """nodes:
  - {id: q1, metadata: {role: bad, zone: eu}}
  - {id: c2, metadata: {zone: eu}}
  - {id: c3, metadata: {zone: us}}
enforcement:
  exceptions:
    - {id: us-maintenance, owner: ops@example.com, reason: racks moved, expires: "2099-01-01T00:00:00Z",
       selector: {zone: us}, action: isolate}
"""


def wyneos(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wyneos_core.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("get")
    service = make_service(write_config(tmp, stale=600, offline=1200, extra=NODES), plugins=(Quarantine(),),
                           read_token=TOKEN)
    (tmp / "token").write_text(TOKEN + "\n")
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10,
                                                    headers={"authorization": f"Bearer {TOKEN}"}) as client:
        agent = Node("agent-1")
        body, headers = agent.enrol_request(add_token(service))
        assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        body, headers = agent.heartbeat(load=0.5, metadata={"zone": "eu"})
        assert client.post("/v1/heartbeats", content=body, headers=headers).status_code == 202
        wait_for(lambda: client.get("/v1/nodes/q1").json().get("isolated"))
        wait_for(lambda: client.get("/v1/nodes/agent-1").json().get("status") == "online")
        yield service, url, tmp / "token", client, agent
    service.orchestrator.stop()


def test_get_nodes_with_selectors_problems_and_formats(server) -> None:
    _, url, token, _, _ = server
    done = wyneos("get", "nodes", "--server", url, "--token-file", str(token))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "LOAD", "TIER", "ZONE", "LICENCE", "PROBLEMS"]
    assert lines[1].startswith("q1 ") and "unknown,isolated" in lines[1]  # worst first
    assert len(lines) == 1 + 4
    done = wyneos("get", "nodes", "-l", "zone=eu,status!=online", "-o", "json", "--server", url,
                  env={"WYNEOS_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert sorted(n["id"] for n in json.loads(done.stdout)["items"]) == ["c2", "q1"]
    done = wyneos("get", "nodes", "--problem", "isolated", "-o", "yaml", env={"WYNEOS_SERVER": url,
                                                                           "WYNEOS_TOKEN_FILE": str(token)})
    assert [n["id"] for n in yaml.safe_load(done.stdout)["items"]] == ["q1"]
    done = wyneos("get", "nodes", "--sort=-load", "--search", "agent", "--server", url, "--token-file",
                  str(token))
    assert done.stdout.splitlines()[1].split()[:3] == ["agent-1", "online", "0.50"]


def test_get_other_kinds(server) -> None:
    _, url, token, _, _ = server
    common = ["--server", url, "--token-file", str(token)]
    actions = json.loads(wyneos("get", "actions", "-o", "json", "-l", "type=isolate", *common).stdout)["items"]
    assert [(a["type"], a["target"]) for a in actions] == [("isolate", "q1")]
    rules = wyneos("get", "rules", "--problem", "failing", *common)
    assert rules.returncode == 0 and "heartbeat-fresh" in rules.stdout
    licences = wyneos("get", "licences", *common)
    assert licences.returncode == 0 and licences.stdout == "No licences found.\n"  # the licence step is off
    exceptions = wyneos("get", "exceptions", *common)
    assert exceptions.returncode == 0, exceptions.stderr
    header, row = exceptions.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "APPLIES", "TO"]
    assert row.split()[:5] == ["us-maintenance", "zone=us", "isolate", "2099-01-01T00:00:00Z", "ops@example.com"]
    tokens = wyneos("get", "tokens", *common)
    assert tokens.returncode == 0 and tokens.stdout.splitlines()[0].split() == ["NAME", "NODE", "USES", "EXPIRES"]


def test_describe_a_node_enrolled_by_an_agent(server) -> None:
    _, url, token, _, _ = server
    done = wyneos("describe", "node", "agent-1", "--server", url, "--token-file", str(token))
    assert done.returncode == 0, done.stderr
    described = yaml.safe_load(done.stdout)
    assert described["kind"] == "node" and described["id"] == "agent-1" and described["enrolled"] is True
    assert described["explain"]["node"]["id"] == "agent-1"
    missing = wyneos("describe", "node", "nope", "--server", url, "--token-file", str(token))
    assert missing.returncode == 1 and "404" in missing.stderr and "no node 'nope'" in missing.stderr


def test_plain_errors_for_no_token_a_bad_selector_and_no_server(server) -> None:
    _, url, token, _, _ = server
    no_token = wyneos("get", "nodes", "--server", url, env={"WYNEOS_TOKEN": "", "WYNEOS_TOKEN_FILE": ""})
    assert no_token.returncode == 1 and "needs the operator token" in no_token.stderr
    bad = wyneos("get", "nodes", "-l", "load>0.9", "--server", url, "--token-file", str(token))
    assert bad.returncode == 2 and "no <, > or quotes" in bad.stderr
    unknown = wyneos("get", "pods", "--server", url, "--token-file", str(token))
    assert unknown.returncode == 1 and "unknown kind 'pods'" in unknown.stderr
    gone = wyneos("get", "nodes", "--server", "http://127.0.0.1:9", "--timeout", "2")
    assert gone.returncode == 1 and "cannot reach the server" in gone.stderr
    for out in (no_token, bad, unknown, gone):
        assert "Traceback" not in out.stderr


def test_watch_streams_a_change_and_ends_at_its_count(server) -> None:
    _, url, token, client, agent = server
    proc = subprocess.Popen([sys.executable, "-m", "wyneos_core.cli", "watch", "nodes", "-l", "zone=eu",
                             "--interval", "0.2", "--count", "1", "--duration", "60", "--server", url,
                             "--token-file", str(token)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("watching 3 nodes"), first
        body, headers = agent.heartbeat(load=0.97, metadata={"zone": "eu"})  # its load changes
        assert client.post("/v1/heartbeats", content=body, headers=headers).status_code == 202
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    [line] = out.strip().splitlines()
    assert "MODIFIED  node agent-1: " in line and "load 0.50 -> 0.97" in line


def test_enrol_token_list_and_revoke_while_the_server_runs(server) -> None:
    _, url, token_file, client, _ = server
    config = str(token_file.parent / "config.yaml")
    made = wyneos("enrol", "token", "--node", "late-1", "--uses", "2", "--config", config)
    assert made.returncode == 0 and made.stdout.startswith("wyn_"), made.stderr
    token = made.stdout.strip()
    listed = json.loads(wyneos("enrol", "token", "list", "--json", "--config", config).stdout)
    [row] = [r for r in listed if r["node_id"] == "late-1"]
    assert row["uses_left"] == 2 and row["state"] == "usable" and token not in json.dumps(listed)
    served = wyneos("get", "tokens", "-o", "json", "--server", url, "--token-file", str(token_file))
    assert row["id"] in [t["id"] for t in json.loads(served.stdout)["items"]]
    done = wyneos("enrol", "token", "revoke", row["id"], "--config", config)
    assert done.returncode == 0 and "revoked enrolment token" in done.stdout, done.stderr
    late = Node("late-1")
    body, headers = late.enrol_request(token)
    refused = client.post("/v1/enrol", content=body, headers=headers)
    assert refused.status_code in (401, 403), refused.text  # the server reads tokens from the state: gone
    again = wyneos("enrol", "token", "revoke", row["id"], "--config", config)
    assert again.returncode == 1 and "no enrolment token has the id" in again.stderr


def test_explain_an_agent_enrolled_node_against_the_server(server) -> None:
    _, url, token_file, _, _ = server
    done = wyneos("explain", "agent-1", "--server", url, "--token-file", str(token_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("node agent-1: status online, load 0.")
    assert "\nactions on agent-1:" in done.stdout
    isolated = json.loads(wyneos("explain", "q1", "--server", url, "--token-file", str(token_file), "--json").stdout)
    assert [a["type"] for a in isolated["actions"]] == ["isolate"] and isolated["actions"][0]["status"] == "in_force"
    config = str(token_file.parent / "config.yaml")
    local = wyneos("explain", "agent-1", "--config", config)  # the config alone does not know it: a hint
    assert local.returncode == 2 and "--server URL" in local.stderr


def test_the_session_in_the_docs_runs_twice_against_a_live_server(server, tmp_path) -> None:
    import re

    _, url, token_file, _, _ = server
    page = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    [script] = re.findall(r"```sh get-example\n(.*?)```", page, re.S)
    (tmp_path / "read-token").write_text(token_file.read_text())
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("WYNEOS_")}
    for _ in range(2):
        run = script.replace("wyneos ", f"{bindir}/wyneos ").replace("http://127.0.0.1:8420", url)
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", run], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert out.startswith("NAME ") and '"kind": "nodes"' in out and "isolate" in out
        assert "kind: node\nname: q1\n" in out and "watching 1 nodes" in out
        assert out.rstrip().splitlines()[-1].startswith("node agent-1: status ")
