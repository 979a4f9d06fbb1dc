"""`wyneos enrol token|list|revoke` on a server's state file, and the agent outbox
surviving a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
from service_helpers import Node, Quarantine, acks_body, add_token, make_service, write_config

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
        # the same issuance (an agent that applied it before the restart does not apply it again)
        assert restarted.outbox.pending("q-1")[0]["issued_at"] == pending[0]["issued_at"]
        assert restarted.outbox.signed("q-1")[0]["payload"]["issued_at"] == pending[0]["issued_at"]
        assert restarted.orchestrator.mesh.is_isolated("q-1")
        assert restarted.acknowledge("q-1", acks_body(node, pending[0]["id"], service=restarted))[0] == 200
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


def test_serve_refuses_bad_startup_input_naming_it(tmp_path, capsys):
    import pytest

    from wyneos_core.cli import main
    from wyneos_core.service.server import bind

    config = write_config(tmp_path)
    for option, value in (("--interval", "0"), ("--interval", "-1"), ("--port", "70000"), ("--port", "http")):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "-c", str(config), option, value])
        assert exit_.value.code == 2
        assert f"argument {option}" in capsys.readouterr().err
    memory = tmp_path / "memory.yaml"
    memory.write_text(config.read_text().replace("state: {path: state.db}", "state: {path: ':memory:'}"))
    assert main(["serve", "-c", str(memory)]) == 2
    assert "memory.yaml: state.path: service mode keeps its state in a file" in capsys.readouterr().err
    busy = bind("127.0.0.1", 0)  # a port somebody already listens on
    try:
        port = busy.getsockname()[1]
        assert main(["serve", "-c", str(config), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"cannot listen on 127.0.0.1:{port}" in err and "Address already in use" in err, err
    finally:
        busy.close()
    assert main(["serve", "-c", str(config), "--host", "10.255.255.254", "--port", "0"]) == 2
    assert "needs an operator token" in capsys.readouterr().err  # not loopback: the read API needs a token
    config.write_text(config.read_text().replace("replay_window: 60}", "replay_window: 60, "
                                                 "read_token: a-token-of-some-length}"))
    assert main(["serve", "-c", str(config), "--host", "10.255.255.254", "--port", "0"]) == 2
    assert "cannot listen on 10.255.255.254:0" in capsys.readouterr().err


def test_agent_init_prints_the_fingerprint_and_refuses_bad_options(tmp_path, capsys):
    import pytest

    from wyneos_core.cli import main
    from wyneos_core.licensing.keys import fingerprint, load_private_key, public_bytes

    state = tmp_path / "agent"
    assert main(["agent", "--server", "http://127.0.0.1:9", "--node", "n-1", "--state-dir", str(state), "--init"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == fingerprint(public_bytes(load_private_key(state / "node.key")))
    for option, value in (("--interval", "0"), ("--max-backoff", "0"), ("--count", "0"), ("--duration", "-1")):
        with pytest.raises(SystemExit):
            main(["agent", "--server", "http://127.0.0.1:9", "--node", "n-1", "--state-dir", str(state), option, value])
        assert f"argument {option}" in capsys.readouterr().err
