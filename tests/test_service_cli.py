"""`wyneos enrol token|list|revoke` on a server's state file, and the agent outbox
surviving a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
from service_helpers import Node, Quarantine, add_token, make_service, write_config

from wyneos_core.service.identity import SignedItem
from wyneos_core.service.server import ServerThread

WYNEOS = [sys.executable, "-m", "wyneos_core.cli"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*WYNEOS, *args], capture_output=True, text=True, check=check)


def test_enrol_token_list_and_revoke_against_a_running_server(tmp_path):
    config = write_config(tmp_path)
    service = make_service(config)
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        token = cli("enrol", "token", "-c", str(config), "--node", "cli-1").stdout.strip()
        node = Node("cli-1")
        body, headers = node.enrol_request(token)
        assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        # the token was for one use only
        body, headers = Node("cli-1").enrol_request(token)
        assert client.post("/v1/enrol", content=body, headers=headers).json()["code"] in ("bad_token", "key_conflict")
        listed = json.loads(cli("enrol", "list", "-c", str(config), "--json").stdout)
        assert [(r["node_id"], r["revoked_at"]) for r in listed] == [("cli-1", None)]
        assert cli("enrol", "revoke", "-c", str(config), "cli-1").returncode == 0
        deadline = time.monotonic() + 10
        while True:
            body, headers = node.heartbeat()
            r = client.post("/v1/heartbeats", content=body, headers=headers)
            if r.status_code == 403:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.json()["code"] == "revoked"
        assert "revoked" in cli("enrol", "list", "-c", str(config)).stdout
    again = cli("enrol", "revoke", "-c", str(config), "cli-1", check=False)
    assert again.returncode == 1 and "no active key" in again.stderr
    bad = cli("enrol", "token", "-c", str(config), "--node", "bad id!", check=False)
    assert bad.returncode == 2 and "not a valid node id" in bad.stderr


def test_unacknowledged_actions_are_queued_again_after_a_restart(tmp_path):
    config = write_config(tmp_path)
    service = make_service(config, plugins=(Quarantine(),))
    node = Node("q-1")
    token = add_token(service)
    body, headers = node.enrol_request(token)
    assert service.enrol(SignedItem.from_headers(headers, body))[0] == 201
    body, headers = node.heartbeat(metadata={"role": "bad"})
    item = SignedItem.from_headers(headers, body)
    now = time.time()
    assert service.accept([item], service.verify_all([item], now), now)[0].status == 202
    service.tick()
    pending = service.outbox.pending("q-1")
    assert [a["type"] for a in pending] == ["isolate"]
    service.orchestrator.stop()
    service.stop()
    restarted = make_service(config, plugins=(Quarantine(),))
    try:
        assert [a["id"] for a in restarted.outbox.pending("q-1")] == [pending[0]["id"]]
        assert restarted.orchestrator.mesh.is_isolated("q-1")
        ack = json.dumps({"acks": [{"action_id": pending[0]["id"], "status": "applied"}]}).encode()
        restarted.acknowledge("q-1", ack)
        assert restarted.outbox.pending("q-1") == []
    finally:
        restarted.orchestrator.stop()
        restarted.stop()
    third = make_service(config, plugins=(Quarantine(),))
    try:
        assert third.outbox.pending("q-1") == []  # acknowledged: not queued again
    finally:
        third.orchestrator.stop()
        third.stop()
