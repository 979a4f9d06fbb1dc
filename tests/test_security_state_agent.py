"""Issue 18 item 14: a damaged state file row does not crash serve (a clear error naming
the row and field; ``wyneos state check`` reports it), an ``agent-state.json`` that is a
FIFO does not hang the agent, and a trickled answer to the session nonce cannot keep
``wyneos agent --duration`` running past its end."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import httpx
from hostile_server import HostileServer, Trickle
from service_helpers import Node, add_token, make_service, write_config

from tests.test_agent_hardening import NODE, okey, orchestrator, run_bounded  # noqa: F401 - okey is a fixture
from wyneos_core.service.agent import Agent, AgentError
from wyneos_core.service.server import ServerThread

CLI = [sys.executable, "-m", "wyneos_core.cli"]


def _state(tmp_path):
    config = write_config(tmp_path)
    make_service(config).db.close()  # the state file with the service's tables
    return config, sqlite3.connect(tmp_path / "state.db")


def test_a_one_byte_node_key_is_reported_and_serve_goes_on(tmp_path, caplog):
    config, db = _state(tmp_path)
    db.execute("INSERT INTO node_keys(node_id, public_key, fingerprint, enrolled_at, seq) "
               "VALUES ('n-1', x'01', 'sha256:x', 1, 1)")
    db.commit()
    db.close()
    done = subprocess.run([*CLI, "state", "check", "--config", str(config)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "node_keys ('n-1'): public_key" in done.stdout + done.stderr
    service = make_service(config)  # no traceback: the damaged row is named in the log
    assert "node_keys ('n-1'): public_key" in caplog.text
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        node = Node("n-2")  # the rest works: another node enrols and is heard
        body, headers = node.enrol_request(add_token(service))
        assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        body, headers = node.heartbeat()
        assert client.post("/v1/heartbeats", content=body, headers=headers).status_code == 202


def test_a_bad_node_id_in_the_state_file_is_a_clear_error(tmp_path):
    config, db = _state(tmp_path)
    db.execute("INSERT INTO nodes(id, status, last_seen, load, metadata, licence_ref, fingerprint, registered_at, "
               "isolated, updated_tick) VALUES ('bad id/..', 'online', NULL, NULL, '{}', NULL, NULL, 1, 0, 0)")
    db.commit()
    db.close()
    done = subprocess.run([*CLI, "state", "check", "--config", str(config)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "nodes ('bad id/..'): id: not a node id" in done.stdout + done.stderr
    done = subprocess.run([*CLI, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "damaged row in table nodes ('bad id/..'): id: not a node id" in done.stderr


def test_an_agent_state_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    state_dir = tmp_path / "agent"
    state_dir.mkdir()
    os.mkfifo(state_dir / "agent-state.json")
    done = subprocess.run([*CLI, "agent", "--server", "http://127.0.0.1:9", "--node", "f-1", "--state-dir",
                           str(state_dir), "--count", "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "agent-state.json" in done.stderr and "not a regular file" in done.stderr
    try:
        Agent("http://127.0.0.1:9", "f-1", state_dir)
    except AgentError as exc:
        assert "not a regular file" in str(exc)
    else:
        raise AssertionError("a FIFO state file was taken")


def test_a_trickled_nonce_answer_cannot_hold_the_agent_past_its_duration(tmp_path, okey):
    plain = orchestrator(okey, [])

    def handler(path, body):
        if path == "/v1/sessions/nonce":  # one byte every 0.5 s: it would take over an hour
            return 200, Trickle(b'{"nonce": "' + b"a" * 10_000 + b'"}', every=0.5)
        return plain(path, body)

    with HostileServer(handler) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t", max_backoff=0.1, timeout=30)
        assert run_bounded(agent, limit=45, duration=3)
        assert any(p == "/v1/sessions/nonce" for _, p, _ in server.requests)
