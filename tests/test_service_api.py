"""wyneos serve's HTTP API on a real uvicorn server on 127.0.0.1: enrolment, signed
heartbeats and every refusal, batches, committed state, metrics, OpenAPI."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from service_helpers import Node, acks_body, add_token, make_service, wait_for, write_config

from wyneos_core.service.server import ServerThread


@pytest.fixture
def served(tmp_path):
    service = make_service(write_config(tmp_path))
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield service, client


def enrol(client, node: Node, token: str | None):
    body, headers = node.enrol_request(token)
    return client.post("/v1/enrol", content=body, headers=headers)


def test_enrol_then_signed_heartbeat_reaches_the_registry(served):
    service, client = served
    node = Node("edge-1")
    r = enrol(client, node, add_token(service))
    assert r.status_code == 201, r.text
    fp = r.json()["fingerprint"]
    assert fp.startswith("sha256:") and len(fp) == 71
    body, headers = node.heartbeat(load=0.42, metadata={"rack": "r7"})
    r = client.post("/v1/heartbeats", content=body, headers=headers)
    assert r.status_code == 202, r.text
    got = wait_for(lambda: (n := client.get("/v1/nodes/edge-1").json())["status"] == "online" and n)
    assert got["load"] == 0.42 and got["metadata"] == {"rack": "r7"}
    assert got["fingerprint"] == fp and got["enrolled"] is True
    # enrolling again with the same key is idempotent; the token is not needed any more
    assert enrol(client, node, None).status_code == 200


def test_enrolment_refusals(served):
    service, client = served
    assert enrol(client, Node("a"), None).json()["code"] == "token_required"
    r = enrol(client, Node("a"), "wyn_not-a-real-token")
    assert r.status_code == 403 and r.json()["code"] == "bad_token"
    token = add_token(service, node_id="only-b")
    r = enrol(client, Node("a"), token)
    assert r.status_code == 403 and "for node 'only-b'" in r.json()["error"]
    assert enrol(client, Node("only-b"), token).status_code == 201
    r = enrol(client, Node("only-b"), add_token(service))  # another key for an enrolled node
    assert r.status_code == 409 and r.json()["code"] == "key_conflict"
    # a request not signed by the key it enrols is refused (no proof of possession)
    thief, victim = Node("c"), Node("c")
    body, _ = victim.enrol_request(add_token(service))
    _, headers = thief.enrol_request(None)
    r = client.post("/v1/enrol", content=body, headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "bad_signature"
    assert "c" not in service.keys and "a" not in service.orchestrator.registry


def test_pinned_fingerprint_enrols_without_token(tmp_path):
    node = Node("pinned-1")
    from wyneos_core.licensing.keys import fingerprint, public_bytes

    fp = fingerprint(public_bytes(node.key))
    config = write_config(tmp_path, extra=f"nodes:\n  - {{id: pinned-1, fingerprint: '{fp}'}}\n"
                                          f"  - {{id: pinned-2, fingerprint: '{fp}'}}")
    service = make_service(config)
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        assert enrol(client, node, None).status_code == 201
        r = enrol(client, Node("pinned-2"), None)  # pinned to a key it does not hold
        assert r.status_code == 403 and r.json()["code"] == "fingerprint_mismatch"


def test_bad_requests_are_refused_with_the_right_status_and_change_nothing(served):
    service, client = served
    node = Node("n1")
    assert enrol(client, node, add_token(service)).status_code == 201
    registry, queue = service.orchestrator.registry, service.orchestrator.intake
    body, headers = node.heartbeat()

    def refused(status, code, **kw):
        r = client.post("/v1/heartbeats", **kw)
        assert r.status_code == status, r.text
        assert r.json()["code"] == code
        return r.json()

    unsigned = {k: v for k, v in headers.items() if not k.startswith("x-wyneos")}
    refused(401, "unsigned", content=body, headers={**unsigned, "x-wyneos-node": "n1"})
    refused(401, "unsigned", content=body, headers=unsigned)
    tampered = body.replace(b"0.3", b"0.9")
    refused(401, "bad_signature", content=tampered, headers=headers)
    stranger = Node("n1")  # right id, wrong key
    sbody, sheaders = stranger.heartbeat()
    refused(401, "bad_signature", content=sbody, headers=sheaders)
    ubody, uheaders = Node("ghost").heartbeat()
    refused(401, "not_enrolled", content=ubody, headers=uheaders)
    refused(401, "malformed", content=body, headers={**headers, "x-wyneos-signature": "!!"})
    old_body, old_headers = node.heartbeat(timestamp=time.time() - 3600)
    refused(409, "stale_timestamp", content=old_body, headers=old_headers)
    big = json.dumps({"metadata": {"x": "y" * 70_000}}).encode()
    refused(413, "too_large", content=big, headers=node.heartbeat()[1])
    bad_load_body = json.dumps({"load": "high"}).encode()
    from wyneos_core.service.identity import sign_request

    bad = sign_request(node.key, "n1", "POST", "/v1/heartbeats", bad_load_body)
    assert refused(422, "invalid", content=bad_load_body, headers=bad)["field"] == "load"
    other = json.dumps({"node_id": "n2", "load": 0.1}).encode()
    refused(403, "node_mismatch", content=other, headers=sign_request(node.key, "n1", "POST", "/v1/heartbeats", other))
    assert len(queue) == 0 and registry["n1"].last_seen is None
    # the genuine request goes through once, and its replay is refused
    assert client.post("/v1/heartbeats", content=body, headers=headers).status_code == 202
    refused(409, "replay", content=body, headers=headers)
    assert len(queue) <= 1
    metrics = client.get("/metrics").text
    assert 'wyneos_heartbeats_received_total{outcome="replay"} 1.0' in metrics
    assert 'wyneos_heartbeats_received_total{outcome="bad_signature"} 2.0' in metrics


def test_revoked_key_is_refused_after_the_next_tick(served):
    service, client = served
    node = Node("n-rev")
    assert enrol(client, node, add_token(service)).status_code == 201
    with service.db_lock:
        assert service.db.revoke_node_key("n-rev", time.time())  # what `wyneos enrol revoke` does
    wait_for(lambda: service.keys.is_revoked("n-rev"))
    body, headers = node.heartbeat()
    r = client.post("/v1/heartbeats", content=body, headers=headers)
    assert r.status_code == 403 and r.json()["code"] == "revoked"
    assert client.get("/v1/nodes/n-rev").json()["revoked"] is True


def test_batches_of_individually_signed_heartbeats(served):
    service, client = served
    nodes = [Node(f"b{i:02d}") for i in range(20)]
    token = add_token(service, uses=20)
    for node in nodes:
        assert enrol(client, node, token).status_code == 201
    items = [n.batch_item(load=0.1 + i / 100) for i, n in enumerate(nodes)]
    items[3]["signature"] = items[4]["signature"]  # corrupted
    items[5]["body"] = items[5]["body"].replace("0.15", "0.99")  # tampered after signing
    items.append(dict(items[0]))  # replayed inside the batch
    items.append({"node": "b01"})  # malformed
    r = client.post("/v1/heartbeats", json={"heartbeats": items})
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["accepted"] == 18 and answer["refused"] == 4
    by_index = {x["index"]: x for x in answer["results"]}
    assert by_index[3]["code"] == by_index[5]["code"] == "bad_signature"
    assert by_index[20]["code"] == "replay" and by_index[21]["code"] == "malformed"
    wait_for(lambda: client.get("/v1/nodes", params={"status": "online"}).json()["count"] == 18)
    assert client.get("/v1/nodes/b05").json()["status"] != "online"
    # a batch where everything is refused answers with the refusal's status
    r = client.post("/v1/heartbeats", json={"heartbeats": [items[0]]})
    assert r.status_code == 409 and r.json()["results"][0]["code"] == "replay"
    r = client.post("/v1/heartbeats", json={"heartbeats": [items[1]] * 30_000})
    assert r.status_code == 413


def test_cluster_state_endpoints_metrics_and_openapi(served):
    service, client = served
    wait_for(lambda: client.get("/healthz").json()["tick"] >= 2)
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["tick_interval"] == 0.2
    tick = client.get("/v1/ticks/latest").json()
    assert tick["schema"] == "wyneos.tick-report/1" and tick["tick"] >= 2
    assert client.get("/v1/ticks", params={"limit": 2}).json()["ticks"][0]["tick"] >= 1
    assert set(client.get("/v1/actions").json()) >= {"in_force", "events", "acks", "committed_tick"}
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("wyneos_ticks_total", "wyneos_tick_duration_seconds_bucket", 'wyneos_nodes{status="online"}',
                 "wyneos_heartbeat_queue_depth", "wyneos_enrolled_nodes"):
        assert name in metrics.text
    spec = client.get("/openapi.json").json()
    for path in ("/v1/heartbeats", "/v1/enrol", "/v1/nodes", "/v1/nodes/{node_id}", "/v1/ticks/latest",
                 "/v1/actions", "/healthz", "/metrics"):
        assert path in spec["paths"], path
    assert "409" in spec["paths"]["/v1/heartbeats"]["post"]["responses"]
    assert client.get("/v1/nodes/nope").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and "<svg id=\"mesh\"" in page.text


def test_service_settings_are_checked(tmp_path):
    from wyneos_core.config import ConfigError, load_config
    from wyneos_core.service.settings import ServiceSettings

    path = tmp_path / "c.yaml"
    path.write_text("plugins: {settings: {service: {replay_window: -1}}}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: plugins.settings.service.replay_window: expected a number > 0"):
        ServiceSettings.from_config(load_config(path))
    path.write_text("plugins: {settings: {service: {prot: 1}}}\n")
    with pytest.raises(ConfigError, match=r"plugins.settings.service.prot: unknown setting"):
        ServiceSettings.from_config(load_config(path))
    for key, value in (("max_batch", 0), ("max_body_bytes", 0), ("max_request_bytes", 0), ("replay_window", 0.001),
                       ("replay_window", 1e9)):
        path.write_text(f"plugins: {{settings: {{service: {{{key}: {value}}}}}}}\n")
        with pytest.raises(ConfigError, match=rf"c.yaml: plugins.settings.service.{key}: must be at"):
            ServiceSettings.from_config(load_config(path))


def test_a_full_heartbeat_queue_answers_503_and_changes_nothing(tmp_path):
    path = write_config(tmp_path, interval=30, stale=60, offline=120)
    path.write_text(path.read_text().replace("unknown_nodes: reject}", "unknown_nodes: reject, max_queue: 4}"))
    service = make_service(path)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        wait_for(lambda: client.get("/healthz").json()["tick"] >= 1)  # the next tick is 30 s away
        nodes = {name: Node(name) for name in "abcdefgh"}
        token = add_token(service, uses=len(nodes))
        for node in nodes.values():
            assert enrol(client, node, token).status_code == 201
        queue, registry = service.orchestrator.intake, service.orchestrator.registry

        def single(name):
            body, headers = nodes[name].heartbeat()
            return body, headers, client.post("/v1/heartbeats", content=body, headers=headers)

        assert all(single(name)[2].status_code == 202 for name in "ab")
        remembered = len(service.nonces)
        batch = json.dumps({"heartbeats": [nodes[name].batch_item(load=0.5) for name in "cde"]}).encode()
        r = client.post("/v1/heartbeats", content=batch, headers={"content-type": "application/json"})
        assert r.status_code == 503, r.text  # 2 waiting + 3 > 4: the whole batch is refused
        answer = r.json()
        assert answer["accepted"] == 0 and answer["refused"] == 3
        assert [x["code"] for x in answer["results"]] == ["queue_full"] * 3
        assert "queue is full" in answer["results"][0]["error"]
        assert len(queue) == 2 and len(service.nonces) == remembered  # nonces given back
        assert all(single(name)[2].status_code == 202 for name in "fg")
        h_body, h_headers, r = single("h")
        assert r.status_code == 503 and r.json()["code"] == "queue_full" and len(queue) == 4
        assert 'wyneos_heartbeats_received_total{outcome="queue_full"} 4.0' in client.get("/metrics").text

        service.tick()  # drains the queue: only the accepted heartbeats reach the registry
        assert len(queue) == 0
        assert {n: registry[n].last_seen is not None for n in "abcdefgh"} == {
            "a": True, "b": True, "c": False, "d": False, "e": False, "f": True, "g": True, "h": False}
        # the refused requests, sent again unchanged (same nonces), are now taken: no trace was left
        r = client.post("/v1/heartbeats", content=batch, headers={"content-type": "application/json"})
        assert r.status_code == 202 and r.json()["accepted"] == 3
        assert client.post("/v1/heartbeats", content=h_body, headers=h_headers).status_code == 202
        # an accepted batch is applied to the registry between ticks (service.applier), the
        # single heartbeat queued after it with it or by the next tick
        wait_for(lambda: all(registry[n].last_seen is not None for n in "cde"))
        assert len(queue) <= 1 and service.tick().heartbeats_accepted == 4 and len(queue) == 0
        assert registry["h"].last_seen is not None


def test_deeply_nested_json_is_a_422_never_a_500(served):
    service, client = served
    node = Node("deep-1")
    assert enrol(client, node, add_token(service)).status_code == 201
    from wyneos_core.service.identity import sign_request

    # unauthenticated batch: 100k '[' (the JSON parser's recursion limit, caught)
    r = client.post("/v1/heartbeats", content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body", r.text
    # enrolment parses its body before checking the signature: 30k '[' + 30k ']' (< 64 KB)
    stranger = Node("deep-2")
    deep = b"[" * 30_000 + b"]" * 30_000
    r = client.post("/v1/enrol", content=deep, headers=sign_request(stranger.key, "deep-2", "POST", "/v1/enrol", deep))
    assert r.status_code == 422 and r.json()["field"] == "body", r.text

    def signed(payload: bytes):
        return client.post("/v1/heartbeats", content=payload,
                           headers=sign_request(node.key, "deep-1", "POST", "/v1/heartbeats", payload))

    r = signed(b'{"metadata": ' + b"[" * 20_000 + b"]" * 20_000 + b"}")
    assert r.status_code == 422 and r.json()["field"] == "body", r.text
    # nested deeper than the registry allows (16), and a key only the orchestrator sets
    nested: dict = {"leaf": 1}
    for _ in range(20):
        nested = {"x": nested}
    r = signed(json.dumps({"metadata": nested}).encode())
    assert r.status_code == 422 and r.json()["field"] == "metadata" and "16" in r.json()["error"], r.text
    r = signed(json.dumps({"metadata": {"restrictions": {"features": []}}}).encode())
    assert r.status_code == 422 and r.json()["field"] == "metadata.restrictions", r.text
    # the same refusals inside a batch, item by item
    items = []
    for metadata in (nested, {"restrictions": 1}):
        body = json.dumps({"metadata": metadata}).encode()
        h = sign_request(node.key, "deep-1", "POST", "/v1/heartbeats", body)
        items.append({"node": "deep-1", "timestamp": h["x-wyneos-timestamp"], "nonce": h["x-wyneos-nonce"],
                      "signature": h["x-wyneos-signature"], "body": body.decode()})
    r = client.post("/v1/heartbeats", json={"heartbeats": items})
    assert r.status_code == 422 and [x["field"] for x in r.json()["results"]] == ["metadata", "metadata.restrictions"]
    # acknowledgements too
    deep_ack = b'{"acks": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    r = client.post("/v1/nodes/deep-1/actions/ack", content=deep_ack,
                    headers=sign_request(node.key, "deep-1", "POST", "/v1/nodes/deep-1/actions/ack", deep_ack))
    assert r.status_code == 422 and r.json()["field"] == "body", r.text
    assert len(service.orchestrator.intake) == 0 and service.orchestrator.registry["deep-1"].last_seen is None
    assert "deep-2" not in service.keys
    # an enrolled node cannot store acknowledgements of actions it never received
    fake = acks_body(node, *["zzz"] * 100)
    r = client.post("/v1/nodes/deep-1/actions/ack", content=fake,
                    headers=sign_request(node.key, "deep-1", "POST", "/v1/nodes/deep-1/actions/ack", fake))
    assert r.status_code == 422 and r.json()["code"] == "unknown_action" and r.json()["acknowledged"] == []
    assert client.get("/v1/actions").json()["acks"] == []


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    line = f"{name}{{{want}}} " if labels else f"{name} "
    found = [ln for ln in text.splitlines() if ln.startswith(line)]
    assert len(found) == 1, (line, text)
    return float(found[0].split()[-1])


class Raiser:
    """Test plugin: its governance hook always raises."""

    __wyneos_name__ = "test-raiser"

    from wyneos_core import hookimpl as _hookimpl

    @_hookimpl
    def wyneos_governance(self, ctx):
        raise RuntimeError("rule engine down")


def test_plugin_error_and_action_metrics_count_what_the_ticks_did(tmp_path):
    from service_helpers import Quarantine

    path = write_config(tmp_path, extra="nodes:\n  - {id: q1, metadata: {role: bad}}\n  - {id: q2}\n  - {id: q3}")
    service = make_service(path, plugins=(Quarantine(), Raiser()))
    try:
        for _ in range(3):
            service.tick()
        text = service.metrics.render().decode()
        assert "_created" not in text  # no doubled series
        assert _metric(text, "wyneos_ticks_total") == 3
        assert _metric(text, "wyneos_plugin_errors_total", plugin="test-raiser", hook="wyneos_governance",
                       kind="exception") == 3
        assert _metric(text, "wyneos_actions_decided_total", type="isolate") == 1  # decided once, then in force
        assert _metric(text, "wyneos_actions_in_force", type="isolate") == 1
        assert _metric(text, "wyneos_nodes_isolated") == 1
        service.orchestrator.registry["q1"].metadata = {"role": "ok"}  # the cause clears
        service.tick()
        text = service.metrics.render().decode()
        assert _metric(text, "wyneos_actions_in_force", type="isolate") == 0
        assert _metric(text, "wyneos_actions_decided_total", type="isolate") == 1
        assert _metric(text, "wyneos_plugin_errors_total", plugin="test-raiser", hook="wyneos_governance",
                       kind="exception") == 4
    finally:
        service.stop()


def test_acks_only_for_delivered_actions_and_retention_prunes_old_state(tmp_path):
    from service_helpers import Quarantine

    from wyneos_core.service.identity import SignedItem

    path = write_config(tmp_path, stale=60, offline=120)
    path.write_text(path.read_text().replace("state: {path: state.db}", "state: {path: state.db, retention_ticks: 3}"))
    service = make_service(path, plugins=(Quarantine(),))
    node, other = Node("q1"), Node("q2")

    def signed(n: Node, body: bytes, headers: dict) -> SignedItem:
        return SignedItem.from_headers(headers, body)

    def beat(n: Node, role: str) -> None:
        body, headers = n.heartbeat(metadata={"role": role})
        item = signed(n, body, headers)
        assert service.accept([item], service.verify_all([item], time.time()), time.time())[0].status == 202

    def ack(n: Node, *ids: str) -> tuple[int, dict]:
        return service.acknowledge(n.id, acks_body(n, *ids, service=service))

    try:
        token = add_token(service, uses=2)
        for n in (node, other):
            assert service.enrol(signed(n, *n.enrol_request(token)))[0] == 201
        beat(node, "bad")
        beat(other, "ok")
        service.tick()
        pending = service.outbox.pending("q1")
        iso = next(a["id"] for a in pending if a["type"] == "isolate" and a["target"] == "q1")
        # a made-up id, or an action never delivered to that node, is refused and leaves no trace
        status, answer = ack(node, "zzz")
        assert status == 422 and answer["field"] == "acks[0].action_id"
        from wyneos_core.service.core import Unprocessable

        with pytest.raises(Unprocessable) as info:
            ack(other, "x" * 129)
        assert info.value.field == "acks[0]" and "action_id" in info.value.reason
        other_ids = {a["id"] for a in service.outbox.pending("q2")}
        status, answer = ack(node, iso, "zzz", *(other_ids - {iso}) or ["nope"])
        assert status == 200 and answer["acknowledged"] == [iso] and len(answer["refused"]) >= 1
        assert service.outbox.pending("q1") == [a for a in pending if a["id"] != iso]
        assert ack(node, iso)[0] == 200  # acknowledging again (a lost answer) is fine
        with service.db_lock:
            stored = service.db.action_acks()
        assert [(a["action_id"], a["node_id"]) for a in stored] == [(iso, "q1")]
        # the cause clears; retention_ticks 3 forgets the ended action, its events and acks
        beat(node, "ok")
        while service.orchestrator.tick_number < 12:
            beat(node, "ok")
            service.tick()
        with service.db_lock:
            db = service.db
            assert all(a["id"] != iso for a in db.actions())
            assert all(e["action_id"] != iso for e in db.action_events())
            assert db.action_acks() == []
            assert len(db.tick_summaries(100)) == 3
    finally:
        service.stop()


def test_enrolment_is_all_or_nothing(tmp_path):
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("replay_window: 60}", "replay_window: 60, register_on_enrol: false}")
                    .replace("unknown_nodes: reject}", "unknown_nodes: reject, max_nodes: 2}")
                    + "nodes:\n  - {id: known-1}\n  - {id: known-2}\n")
    service = make_service(path)
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        token = add_token(service, uses=1)
        r = enrol(client, Node("stranger"), token)  # refused: the token is not spent on it
        assert r.status_code == 403 and r.json()["code"] == "not_registered"
        with service.db_lock:
            assert [t["uses_left"] for t in service.db.enrol_tokens()] == [1]
            assert service.db.node_keys() == []
        assert "stranger" not in service.orchestrator.registry and "stranger" not in service.orchestrator.mesh
        assert enrol(client, Node("known-1"), token).status_code == 201  # the token still works
        r = enrol(client, Node("known-2"), token)  # used up now: no key, no node
        assert r.status_code == 403 and r.json()["code"] == "bad_token"
        with service.db_lock:
            assert [k["node_id"] for k in service.db.node_keys()] == ["known-1"]
    # a node the registry cannot take (full) is refused before the token or the key is touched
    path.write_text(path.read_text().replace("register_on_enrol: false", "register_on_enrol: true"))
    service = make_service(path)
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        token = add_token(service, uses=1)
        r = enrol(client, Node("extra-1"), token)
        assert r.status_code == 422 and r.json()["field"] == "node_id" and "registry full" in r.json()["error"]
        with service.db_lock:
            assert sorted(t["uses_left"] for t in service.db.enrol_tokens()) == [0, 1]
            assert [k["node_id"] for k in service.db.node_keys()] == ["known-1"]
        assert "extra-1" not in service.orchestrator.registry
