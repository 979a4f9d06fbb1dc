"""Hostile input at the service's door (issue 9, breaks 3-5): lone surrogates, the
reserved id ``orchestrator``, enrolment that changes nothing before its token is good,
and a node that cannot choose its customer. Real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from service_helpers import Node, add_token, make_service, wait_for, write_config

from wyneos_core.mesh import MeshError
from wyneos_core.service.identity import sign_request
from wyneos_core.service.server import ServerThread


def enrol(client, node: Node, token: str | None):
    body, headers = node.enrol_request(token)
    return client.post("/v1/enrol", content=body, headers=headers)


def signed(node: Node, body: dict | bytes, path: str = "/v1/heartbeats"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw, {**sign_request(node.key, node.id, "POST", path, raw), "content-type": "application/json"}


@pytest.fixture
def served(tmp_path):
    path = write_config(tmp_path, extra="nodes:\n  - {id: known, metadata: {customer: lab}}\n")
    service = make_service(path)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield service, client


def test_lone_surrogates_are_refused_with_422_naming_the_field(served):
    service, client = served
    node = Node("edge-1")
    assert enrol(client, node, add_token(service)).status_code == 201
    cases = {
        "metadata.rack": {"timestamp": time.time(), "metadata": {"rack": "\ud800"}},
        "metadata.tags[1]": {"timestamp": time.time(), "metadata": {"tags": ["ok", "x\udfff"]}},
        "licence_ref": {"timestamp": time.time(), "licence_ref": "\ud800"},
    }
    for field, body in cases.items():
        raw, headers = signed(node, body)
        assert b"\\ud" in raw  # json.dumps escapes the surrogate: the body is valid UTF-8 bytes
        r = client.post("/v1/heartbeats", content=raw, headers=headers)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field and "not valid Unicode" in r.json()["error"]
    # a key that is a lone surrogate
    raw, headers = signed(node, {"timestamp": time.time(), "metadata": {"\ud800": 1}})
    assert client.post("/v1/heartbeats", content=raw, headers=headers).status_code == 422
    # in a batch: that item is refused, the good one goes through
    good = node.batch_item()
    bad_body = json.dumps({"timestamp": time.time(), "metadata": {"rack": "\udbff"}})
    _, bad_headers = signed(node, bad_body.encode())
    bad = {"node": node.id, "timestamp": bad_headers["x-wyneos-timestamp"], "nonce": bad_headers["x-wyneos-nonce"],
           "signature": bad_headers["x-wyneos-signature"], "body": bad_body}
    r = client.post("/v1/heartbeats", json={"heartbeats": [bad, good]})
    assert r.status_code == 202 and r.json()["accepted"] == 1
    assert r.json()["results"][0]["field"] == "metadata.rack"
    # enrolment: a licence_ref with a lone surrogate
    other = Node("edge-2")
    body = json.dumps({"node_id": "edge-2", "public_key": json.loads(other.enrol_request(None)[0])["public_key"],
                       "token": add_token(service), "licence_ref": "\ud800"}).encode()
    r = client.post("/v1/enrol", content=body, headers={**sign_request(other.key, "edge-2", "POST", "/v1/enrol", body)})
    assert r.status_code == 422 and r.json()["field"] == "licence_ref"
    assert "edge-2" not in service.orchestrator.registry
    # every read endpoint still answers after the next ticks
    tick = service.view.tick
    wait_for(lambda: service.view.tick >= tick + 2)
    for path in ("/v1/nodes", "/v1/nodes/edge-1", "/v1/ticks/latest", "/v1/mesh", "/healthz"):
        assert client.get(path).status_code == 200, path


def test_the_orchestrator_id_cannot_be_enrolled_or_heartbeat(served, tmp_path):
    service, client = served
    nodes_before = client.get("/v1/nodes").json()["nodes"]
    for token in ("wyn_made-up", add_token(service)):
        r = enrol(client, Node("orchestrator"), token)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "node_id" and "reserved" in r.json()["error"]
    assert "orchestrator" not in service.orchestrator.registry
    with service.db_lock:
        assert service.db.node_keys() == []
        assert [t["uses_left"] for t in service.db.enrol_tokens()] == [1]
        ids = [r[0] for r in service.db.conn.execute("SELECT id FROM nodes")]
    assert "orchestrator" not in ids
    # the tick thread may run between the two reads and move trust scores: what the refused
    # requests could have changed is who is registered and what they reported
    def reported(nodes):
        return [{k: v for k, v in n.items() if k not in ("trust", "trust_tier")} for n in nodes]

    assert reported(client.get("/v1/nodes").json()["nodes"]) == reported(nodes_before)


def test_a_refused_enrolment_changes_nothing_in_memory_or_on_disk(served):
    service, client = served
    known = service.orchestrator.registry["known"]
    assert known.fingerprint is None
    r = enrol(client, Node("known"), "wyn_not-a-real-token")
    assert r.status_code == 403 and r.json()["code"] == "bad_token"
    assert known.fingerprint is None  # the refused key's fingerprint never reached the node
    assert "known" not in service.keys
    r = enrol(client, Node("newcomer"), "wyn_not-a-real-token")
    assert r.status_code == 403
    assert "newcomer" not in service.orchestrator.registry and "newcomer" not in service.orchestrator.mesh


def test_a_failing_join_rolls_back_the_token_the_key_and_the_registry(served, monkeypatch):
    service, client = served
    token = add_token(service)
    mesh = service.orchestrator.mesh

    def broken(self, edges):
        raise MeshError("injected: the mesh refuses the edge")

    monkeypatch.setattr(type(mesh), "add_edges", broken)
    r = enrol(client, Node("edge-9"), token)
    assert r.status_code == 500
    assert "edge-9" not in service.orchestrator.registry and "edge-9" not in mesh and "edge-9" not in service.keys
    with service.db_lock:
        assert service.db.node_keys() == []
        assert [t["uses_left"] for t in service.db.enrol_tokens()] == [1]
    monkeypatch.undo()
    with httpx.Client(base_url=str(client.base_url), timeout=10) as fresh:  # the 500 closed the connection
        assert enrol(fresh, Node("edge-9"), token).status_code == 201  # the token was not spent


def test_a_node_cannot_choose_its_customer(served):
    service, client = served
    node = Node("known")
    assert enrol(client, node, add_token(service)).status_code == 201
    raw, headers = signed(node, {"timestamp": time.time(), "metadata": {"customer": "globex"}})
    r = client.post("/v1/heartbeats", content=raw, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "metadata.customer"
    raw, headers = signed(node, {"timestamp": time.time(), "metadata": {"rack": "r1"}})
    assert client.post("/v1/heartbeats", content=raw, headers=headers).status_code == 202
    got = wait_for(lambda: (n := client.get("/v1/nodes/known").json())["metadata"].get("rack") and n)
    assert got["metadata"]["customer"] == "lab"  # the operator's, from the config


def test_a_customer_stored_by_an_older_release_is_not_restored(tmp_path):
    from wyneos_core.config import load_config
    from wyneos_core.tick import Orchestrator

    path = write_config(tmp_path, extra="nodes:\n  - {id: a}\n  - {id: b, metadata: {customer: lab}}\n")
    orch = Orchestrator(load_config(path), load_entrypoints=False)
    orch.start()
    orch.tick()
    for node_id in ("a", "b"):
        orch.store.conn.execute("UPDATE nodes SET metadata = ? WHERE id = ?",
                                (json.dumps({"customer": "globex", "rack": "r1"}), node_id))
    orch.stop()
    again = Orchestrator(load_config(path), load_entrypoints=False)
    assert again.registry["a"].metadata == {"rack": "r1"}
    assert again.registry["b"].metadata == {"rack": "r1", "customer": "lab"}
    again.store.close()


def test_config_refuses_the_reserved_node_id(tmp_path):
    from wyneos_core.config import ConfigError, load_config

    path = write_config(tmp_path, extra="nodes:\n  - {id: a}\n  - {id: orchestrator}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "nodes[1].id" in str(err.value) and "reserved" in str(err.value)


def test_an_enrolment_token_can_carry_the_customer_and_the_config_wins(tmp_path):
    path = write_config(tmp_path, extra="nodes:\n  - {id: known, metadata: {customer: lab}}\n")

    def token(service, customer):
        from wyneos_core.service.core import hash_token, new_token

        text, now = new_token(), time.time()
        with service.db_lock:
            service.db.add_enrol_token(hash_token(text), None, 1, now + 600, now, customer=customer)
        return text

    service = make_service(path)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert enrol(client, Node("edge-7"), token(service, "globex")).status_code == 201
        assert enrol(client, Node("known"), token(service, "globex")).status_code == 201
        assert enrol(client, Node("edge-8"), token(service, None)).status_code == 201
        got = {n: client.get(f"/v1/nodes/{n}").json()["metadata"].get("customer") for n in ("edge-7", "known", "edge-8")}
        assert got == {"edge-7": "globex", "known": "lab", "edge-8": None}
        tick = service.view.tick
        wait_for(lambda: service.view.tick >= tick + 2)  # written to the state file with the node
    # after a restart the customer comes from the token's record, not from the stored metadata
    again = make_service(path)
    with ServerThread(again) as url, httpx.Client(base_url=url, timeout=10) as client:
        got = {n: client.get(f"/v1/nodes/{n}").json()["metadata"].get("customer") for n in ("edge-7", "known", "edge-8")}
        assert got == {"edge-7": "globex", "known": "lab", "edge-8": None}


def test_enrol_token_cli_stores_the_customer(tmp_path):
    import subprocess
    import sys

    path = write_config(tmp_path)
    done = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "enrol", "token", "--config", str(path),
                           "--customer", "globex"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from wyneos_core.service.core import hash_token
    from wyneos_core.store import StateStore

    store = StateStore.open(tmp_path / "state.db")
    rows = dict(store.conn.execute("SELECT token_hash, customer FROM enrol_token_customers"))
    store.close()
    assert rows == {hash_token(done.stdout.strip()): "globex"}
