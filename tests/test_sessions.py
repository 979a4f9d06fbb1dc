"""Heartbeat sessions on a real uvicorn server on 127.0.0.1: the signed handshake, MACed
heartbeats and every refusal, renewal, revocation, rate limits, the bounded queue, and
batches a relay could have touched."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from service_helpers import Node, add_token, make_service, wait_for, write_config

from wyneos_core import hookimpl
from wyneos_core.intake import CheckedHeartbeat
from wyneos_core.licensing.envelope import open_envelope
from wyneos_core.licensing.keys import key_id, public_bytes
from wyneos_core.model import Heartbeat
from wyneos_core.service.heartbeat_api import HeartbeatAPI
from wyneos_core.service.identity import b64e
from wyneos_core.service.server import ServerThread
from wyneos_core.service.session_client import SessionClient, SessionError
from wyneos_core.service.sessions import HANDSHAKE_FORMAT, handshake_bytes, mac


@pytest.fixture
def served(tmp_path):
    service = make_service(write_config(tmp_path, interval=0.2, stale=5, offline=10), heartbeat_burst=50)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield service, client, url


def enrolled(service, client, node_id: str) -> Node:
    node = Node(node_id)
    body, headers = node.enrol_request(add_token(service))
    assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
    return node


def session_post(client, sid: str, seq: int, body: bytes, key: bytes | None = None, tag: str | None = None):
    tag = tag if tag is not None else mac(key, seq, body)
    return client.post("/v1/heartbeats", content=body,
                       headers={"x-wyneos-session": sid, "x-wyneos-seq": str(seq), "x-wyneos-mac": tag})


def test_handshake_opens_a_session_both_sides_share_its_key_and_heartbeats_reach_the_registry(served):
    service, client, url = served
    node = enrolled(service, client, "s-1")
    agent = SessionClient(url, node.id, node.key)
    session = agent.open()
    assert agent.orchestrator_fingerprint == service.okey.fingerprint
    held = service.sessions.get(session.id)
    assert held is not None and held.node_id == "s-1" and held.key == session.key and len(session.key) == 32
    status, answer = agent.heartbeat(json.dumps({"load": 0.7, "metadata": {"rack": "r2"}}).encode())
    assert status == 202 and answer["accepted"] == 1 and answer["seq"] == 1
    got = wait_for(lambda: (n := client.get("/v1/nodes/s-1").json())["load"] == 0.7 and n)
    assert got["metadata"] == {"rack": "r2"} and got["status"] == "online"
    # the answer of the handshake is an envelope the orchestrator key signed
    nonce = client.post("/v1/sessions/nonce").json()["nonce"]
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from wyneos_core.service.sessions import x25519_public

    agent_key = b64e(x25519_public(X25519PrivateKey.generate()))
    r = client.post("/v1/sessions", json={"node_id": "s-1", "nonce": nonce, "agent_key": agent_key,
                                          "signature": b64e(node.key.sign(handshake_bytes("s-1", nonce, agent_key)))})
    assert r.status_code == 201, r.text
    public = service.okey.private.public_key()
    payload = open_envelope(r.json()["session"], HANDSHAKE_FORMAT, {key_id(public): public})
    assert payload["node_id"] == "s-1" and payload["nonce"] == nonce and payload["agent_key"] == agent_key
    assert payload["expires_at"] > time.time() and service.sessions.get(payload["session_id"]) is not None


def test_handshake_refusals_change_nothing(served):
    service, client, url = served
    node = enrolled(service, client, "s-2")
    stranger = Node("s-2")  # same id, another key

    def attempt(signer: Node, node_id: str = "s-2", nonce: str | None = None, agent_key: str | None = None):
        nonce = nonce or client.post("/v1/sessions/nonce").json()["nonce"]
        agent_key = agent_key or b64e(bytes(range(1, 33)))
        sig = b64e(signer.key.sign(handshake_bytes(node_id, nonce, agent_key)))
        return client.post("/v1/sessions", json={"node_id": node_id, "nonce": nonce, "agent_key": agent_key,
                                                 "signature": sig})

    r = attempt(stranger)
    assert r.status_code == 401 and r.json()["code"] == "bad_signature"
    r = attempt(Node("nobody"), node_id="nobody")
    assert r.status_code == 401 and r.json()["code"] == "not_enrolled"
    r = attempt(node, nonce=b64e(bytes(40)))  # a nonce this server never made
    assert r.status_code == 401 and r.json()["code"] == "bad_nonce"
    r = attempt(node, agent_key=b64e(bytes(32)))  # a low-order X25519 point: all-zero shared secret
    assert r.status_code == 422 and "agent_key" in r.json()["error"]
    r = client.post("/v1/sessions", json={"node_id": "s-2", "nonce": "x"})
    assert r.status_code == 422 and r.json()["field"] == "body"
    assert len(service.sessions) == 0
    nonce = client.post("/v1/sessions/nonce").json()["nonce"]
    assert attempt(node, nonce=nonce).status_code == 201
    r = attempt(node, nonce=nonce)  # a nonce works once
    assert r.status_code == 409 and r.json()["code"] == "replay"
    assert len(service.sessions) == 1


def test_replayed_lower_or_unmaced_heartbeats_are_refused_and_change_nothing(served):
    service, client, url = served
    node = enrolled(service, client, "s-3")
    agent = SessionClient(url, node.id, node.key)
    session = agent.open()
    key, sid = session.key, session.id
    first = b'{"load": 0.1}'
    assert session_post(client, sid, 5, first, key).status_code == 202
    wait_for(lambda: client.get("/v1/nodes/s-3").json()["load"] == 0.1)
    queued = len(service.orchestrator.intake)
    cases = [
        (session_post(client, sid, 5, b'{"load": 0.9}', key), 409, "replay"),  # same sequence number
        (session_post(client, sid, 4, b'{"load": 0.9}', key), 409, "replay"),  # lower
        (session_post(client, sid, 6, b'{"load": 0.9}', key, tag=mac(key, 6, first)), 401, "bad_mac"),  # other body
        (session_post(client, sid, 6, b'{"load": 0.9}', bytes(32)), 401, "bad_mac"),  # wrong key
        (session_post(client, sid, 6, b'{"load": 0.9}', key, tag="zz"), 401, "bad_mac"),
        (session_post(client, "no-such-session", 6, b'{"load": 0.9}', key), 401, "unknown_session"),
        (session_post(client, sid, 6, b'{"load": 0.9, "node_id": "other"}', key), 403, "node_mismatch"),
        (session_post(client, sid, 6, b'{"load": -3}', key), 422, "invalid"),
        (session_post(client, sid, 6, b'{"load": 1, "colour": "red"}', key), 422, "invalid"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert service.sessions.get(sid).seq == 5 and len(service.orchestrator.intake) <= queued
    time.sleep(0.5)  # a few ticks: nothing of the refused heartbeats reached the registry
    assert client.get("/v1/nodes/s-3").json()["load"] == 0.1
    # the next sequence number still works: the refusals consumed nothing
    assert session_post(client, sid, 6, b'{"load": 0.2}', key).status_code == 202


def test_an_expired_session_is_refused_and_the_client_renews_without_a_gap(tmp_path):
    service = make_service(write_config(tmp_path, interval=0.2, stale=5, offline=10), session_ttl=1.5,
                           heartbeat_burst=100, heartbeat_rate=100.0)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        node = enrolled(service, client, "s-4")
        agent = SessionClient(url, node.id, node.key)
        old = agent.open()
        statuses = []
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:  # bounded: about 4 s of heartbeats every 0.1 s
            statuses.append(agent.heartbeat(b'{"load": 0.5}')[0])
            time.sleep(0.1)
        assert set(statuses) == {202} and len(statuses) >= 10
        assert agent.opened >= 3 and agent.session.id != old.id  # renewed at 2/3 of each session's life
        r = session_post(client, old.id, 10_000, b'{"load": 0.5}', old.key)
        assert r.status_code == 401 and r.json()["code"] in ("session_expired", "unknown_session")
        assert len(service.sessions.of_node("s-4")) <= 2


def test_a_revoked_key_ends_its_sessions_at_once(served):
    service, client, url = served
    node = enrolled(service, client, "s-5")
    agent = SessionClient(url, node.id, node.key)
    session = agent.open()
    assert agent.heartbeat(b'{"load": 0.3}')[0] == 202
    with service.db_lock:
        assert service.db.revoke_node_key("s-5", time.time())
    service.refresh_keys()  # what the next tick does
    assert service.sessions.get(session.id) is None and service.sessions.of_node("s-5") == []
    r = session_post(client, session.id, 99, b'{"load": 0.3}', session.key)
    assert r.status_code == 401 and r.json()["code"] == "unknown_session"
    with pytest.raises(SessionError) as refused:
        agent.heartbeat(b'{"load": 0.3}')  # the client tries a new session: the key is revoked
    assert refused.value.status == 403 and refused.value.code == "revoked"


def test_a_session_revoked_while_open_is_refused_403_on_its_next_heartbeat(served):
    service, client, url = served
    node = enrolled(service, client, "s-5b")
    session = SessionClient(url, node.id, node.key).open()
    service.keys.set("s-5b", service.keys.get("s-5b"), revoked=True)  # known revoked, table not told yet
    r = session_post(client, session.id, 1, b'{"load": 0.3}', session.key)
    assert r.status_code == 403 and r.json()["code"] == "revoked"


def test_the_client_refuses_an_orchestrator_key_it_did_not_pin(served):
    service, client, url = served
    node = enrolled(service, client, "s-6")
    agent = SessionClient(url, node.id, node.key, orchestrator_fingerprints=["sha256:" + "0" * 64])
    with pytest.raises(SessionError, match="not among the pinned"):
        agent.open()


def test_answers_carry_the_session_mac_and_actions(served):
    service, client, url = served
    node = enrolled(service, client, "s-7")
    session = SessionClient(url, node.id, node.key).open()
    r = session_post(client, session.id, 1, b'{"load": 0.3}', session.key)
    from wyneos_core.service.sessions import answer_mac

    assert r.status_code == 202 and r.headers["x-wyneos-mac"] == answer_mac(session.key, 1, r.content)


def test_rate_limit_refuses_429_without_consuming_the_sequence(tmp_path):
    service = make_service(write_config(tmp_path), heartbeat_burst=3, heartbeat_rate=0.01)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        node = enrolled(service, client, "s-8")
        session = SessionClient(url, node.id, node.key).open()
        codes = [session_post(client, session.id, seq, b'{"load": 0.3}', session.key).status_code
                 for seq in range(1, 6)]
        assert codes == [202, 202, 202, 429, 429]
        assert service.sessions.get(session.id).seq == 3
        r = session_post(client, session.id, 4, b'{"load": 0.3}', session.key)
        assert r.status_code == 429 and r.json()["code"] == "rate_limited"


def test_a_full_queue_answers_503_and_changes_nothing(served):
    service, client, url = served
    node = enrolled(service, client, "s-9")
    session = SessionClient(url, node.id, node.key).open()
    service.orchestrator.intake.maxlen = 0
    r = session_post(client, session.id, 1, b'{"load": 0.3}', session.key)
    assert r.status_code == 503 and r.json()["code"] == "queue_full"
    assert service.sessions.get(session.id).seq == 0
    service.orchestrator.intake.maxlen = 1000
    assert session_post(client, session.id, 1, b'{"load": 0.3}', session.key).status_code == 202


def test_batches_mix_session_and_signed_items_and_an_altered_item_is_refused_alone(served):
    service, client, url = served
    nodes = [enrolled(service, client, f"b-{i}") for i in range(4)]
    agents = [SessionClient(url, n.id, n.key) for n in nodes[:3]]
    items = [a.item(json.dumps({"load": 0.1 * (i + 1)}).encode()) for i, a in enumerate(agents)]
    items.append(nodes[3].batch_item(load=0.4))
    # a relay alters the body of one session item and one signed item; keeps their MAC/signature
    forged = dict(items[1], body=json.dumps({"load": 9.0}))
    forged_signed = dict(items[3], body=json.dumps({"load": 9.0}))
    r = client.post("/v1/heartbeats", json={"heartbeats": [items[0], forged, items[2], forged_signed]})
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["accepted"] == 2
    assert {(x["index"], x["code"]) for x in answer["results"]} == {(1, "bad_mac"), (3, "bad_signature")}
    wait_for(lambda: client.get("/v1/nodes/b-2").json()["load"] == 0.3)
    assert client.get("/v1/nodes/b-1").json()["load"] is None and client.get("/v1/nodes/b-3").json()["load"] is None
    # the untouched items still go through afterwards (the forgery consumed nothing)
    r = client.post("/v1/heartbeats", json={"heartbeats": [items[1], items[3]]})
    assert r.json()["accepted"] == 2
    wait_for(lambda: client.get("/v1/nodes/b-1").json()["load"] == 0.2)


def test_items_of_one_session_in_a_batch_keep_their_order(served):
    service, client, url = served
    node = enrolled(service, client, "o-1")
    agent = SessionClient(url, node.id, node.key)
    now = time.time()
    first, second, third = (agent.item(json.dumps({"timestamp": now + v, "load": v}).encode())
                            for v in (0.1, 0.2, 0.3))
    r = client.post("/v1/heartbeats", json={"heartbeats": [first, third, second]})
    answer = r.json()
    assert answer["accepted"] == 2 and [(x["index"], x["code"]) for x in answer["results"]] == [(2, "replay")]
    wait_for(lambda: client.get("/v1/nodes/o-1").json()["load"] == 0.3)


def test_repeated_metadata_is_queued_without_it_only_when_applying_it_changes_nothing(tmp_path):
    """Metadata that repeats the session's last and that the node holds already, value for
    value, is left out of the queued heartbeat (nothing to check or merge again); a change
    of value or of type only (1 against true), or a repeat after another value earlier in
    the same batch, is queued and applied."""
    service = make_service(write_config(tmp_path, interval=0.2, stale=5, offline=10), heartbeat_burst=50)
    orch = service.orchestrator
    orch.registry.register("m-1", now=time.time())
    service.keys.set("m-1", public_bytes(Node("m-1").key))
    api = HeartbeatAPI(service)
    key = bytes(range(32))
    sid = service.sessions.issue_ticket("m-1", key, time.time() + 600)
    seq = iter(range(1, 100))
    t0 = time.time()

    def send(*metadatas):
        items = []
        for i, metadata in enumerate(metadatas):
            n = next(seq)
            body = json.dumps({"timestamp": t0 + n / 100, "load": 0.5, "metadata": metadata}).encode()
            items.append((i, sid, n, mac(key, n, body), body))
        refused, accepted = api.accept_session(items, time.time())
        assert not refused and len(accepted) == len(items)
        queued = orch.intake.drain()
        # looked at, then applied by the tick: heartbeats as objects, and batches of columns
        # (timestamp and load only: no metadata), in the order they were queued
        seen, done = [], 0
        for mark, batch in zip(queued.marks, queued.columns):
            orch.intake.put_many(queued[done:mark])
            seen += [hb.metadata for hb in queued[done:mark]] + [{}] * len(batch)
            orch.intake.put_columns(batch)
            done = mark
        orch.intake.put_many(queued[done:])
        seen += [hb.metadata for hb in queued[done:]]
        orch.tick()
        return seen

    def stored():
        return orch.registry.get("m-1").metadata

    assert send({"v": 1, "rack": "r1"}) == [{"v": 1, "rack": "r1"}]  # first time: checked and merged
    assert send({"v": 1, "rack": "r1"}) == [{}] and stored() == {"v": 1, "rack": "r1"}  # a repeat: left out
    assert send({"v": True, "rack": "r1"}) == [{"v": True, "rack": "r1"}]  # 1 and true differ
    assert stored()["v"] is True
    # in one batch: another value first, then the stored one again: both applied, in order
    assert send({"v": 2, "rack": "r1"}, {"v": True, "rack": "r1"}) == [{"v": 2, "rack": "r1"}, {"v": True, "rack": "r1"}]
    assert stored() == {"v": True, "rack": "r1"}
    # the node lost a key meanwhile (as if re-registered): the repeat is applied again
    orch.registry.get("m-1").metadata = {"rack": "r1"}
    assert send({"v": True, "rack": "r1"}) == [{"v": True, "rack": "r1"}] and stored()["v"] is True


def test_openapi_documents_sessions_and_the_session_heartbeat(served):
    service, client, url = served
    doc = client.get("/openapi.json").json()
    assert "/v1/sessions" in doc["paths"] and "/v1/sessions/nonce" in doc["paths"]
    names = {p["name"] for p in doc["paths"]["/v1/heartbeats"]["post"]["parameters"]}
    assert {"X-Wyneos-Session", "X-Wyneos-Seq", "X-Wyneos-Mac"} <= names
    assert {"429", "503"} <= set(doc["paths"]["/v1/heartbeats"]["post"]["responses"])


class SlowTick:
    """Test plugin: the governance step waits until the test lets it go (bounded)."""

    __wyneos_name__ = "test-slow-tick"

    def __init__(self) -> None:
        self.armed = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.inside = False

    @hookimpl
    def wyneos_governance(self, ctx, nodes, licences):
        if self.armed.is_set() and not self.release.is_set():
            self.inside = True
            self.entered.set()
            self.release.wait(20)
            self.inside = False
        return []


def test_a_slow_tick_does_not_freeze_intake(tmp_path):
    slow = SlowTick()
    service = make_service(write_config(tmp_path, interval=0.2, stale=30, offline=60), plugins=(slow,),
                           heartbeat_burst=100)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        node = enrolled(service, client, "f-1")
        agent = SessionClient(url, node.id, node.key)
        agent.open()
        slow.armed.set()  # enrolment waits for the tick lock: stick the tick only now
        assert slow.entered.wait(20)
        statuses = [agent.heartbeat(json.dumps({"load": i / 100}).encode())[0] for i in range(30)]
        assert slow.inside  # all 30 were answered while the tick was still stuck
        slow.release.set()
        assert statuses == [202] * 30
        wait_for(lambda: client.get("/v1/nodes/f-1").json()["load"] == 0.29)


def test_checked_heartbeats_skip_the_second_check_only_from_the_builtin_intake(make_orchestrator):
    from conftest import cluster_yaml

    orch = make_orchestrator(cluster_yaml(3))
    now = orch.clock()
    node_id = "n01"
    bad = CheckedHeartbeat(node_id, now, load=-5.0)  # a plugin cannot smuggle an unchecked value in
    accepted, rejected = orch.registry.accept_all([bad], now, trusted=False)
    assert accepted == 0 and rejected[0].field == "load"
    good = CheckedHeartbeat(node_id, now, load=0.5)
    assert orch.registry.accept_all([good], now, trusted=True) == (1, [])
    # what may have changed since the intake checked it is checked again: a clock rollback
    old = CheckedHeartbeat(node_id, now - 3600, load=0.6)
    accepted, rejected = orch.registry.accept_all([old], now, trusted=True)
    assert accepted == 0 and rejected[0].reason.startswith("clock rollback")
    assert orch.registry[node_id].load == 0.5 and orch.registry[node_id].last_rollback == now
    # and a node removed meanwhile is not brought back by a checked heartbeat
    orch.registry.deregister(node_id)
    accepted, rejected = orch.registry.accept_all([CheckedHeartbeat(node_id, now, load=0.1)], now, trusted=True)
    assert accepted == 0 and rejected[0].field == "node_id" and node_id not in orch.registry
    assert isinstance(good, Heartbeat)


def test_wyneos_agent_sends_its_heartbeats_in_a_session(tmp_path):
    from wyneos_core.service.agent import Agent

    service = make_service(write_config(tmp_path, interval=0.2, stale=5, offline=10))
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        agent = Agent(url, "ag-1", tmp_path / "agent", token=add_token(service), interval=0.05)
        agent.run(count=6)
        assert agent.stats.accepted == 6 and agent.stats.refused == 0
        (sid,) = service.sessions.of_node("ag-1")
        assert service.sessions.get(sid).seq == 6  # every heartbeat went through the session
        wait_for(lambda: client.get("/v1/nodes/ag-1").json()["status"] == "online")
        signed = Agent(url, "ag-2", tmp_path / "agent2", token=add_token(service), interval=0.05, sessions=False)
        signed.run(count=2)
        assert signed.stats.accepted == 2 and service.sessions.of_node("ag-2") == []


def test_the_tick_keeps_running_while_intake_is_flooded(tmp_path):
    service = make_service(write_config(tmp_path, interval=0.1, stale=30, offline=60), heartbeat_burst=100_000,
                           heartbeat_rate=100_000.0)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        nodes = [enrolled(service, client, f"fl-{i}") for i in range(4)]
        agents = [SessionClient(url, n.id, n.key) for n in nodes]
        stop = threading.Event()
        sent = [0] * len(agents)

        def flood(i: int) -> None:
            while not stop.is_set() and sent[i] < 5000:  # bounded in count and by the test's stop
                assert agents[i].heartbeat(b'{"load": 0.5}')[0] == 202
                sent[i] += 1

        threads = [threading.Thread(target=flood, args=(i,)) for i in range(len(agents))]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: sum(sent) >= 50)
            first = service.view.tick
            wait_for(lambda: service.view.tick >= first + 5)  # ticks go on under the flood
            assert all(t.is_alive() for t in threads) or sum(sent) == 20_000
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert service.tick_error is None


def test_a_session_survives_a_server_restart_without_a_new_handshake(tmp_path):
    """Session tickets: the restarted server (same state directory, so the same
    orchestrator key) takes the session up from its id; the agent never re-handshakes,
    and a ticket altered by one character is no session."""
    config = write_config(tmp_path, interval=0.2, stale=5, offline=10)
    service = make_service(config, heartbeat_burst=50)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        node = enrolled(service, client, "s-restart")
        agent = SessionClient(url, node.id, node.key)
        assert agent.heartbeat(b'{"load": 0.3}')[0] == 202
        session = agent.session
    again = make_service(config, heartbeat_burst=50)  # a new process as far as sessions go
    with ServerThread(again) as url2, httpx.Client(base_url=url2, timeout=10) as client:
        parts = httpx.URL(url2)
        agent.move_to(parts.scheme, parts.host, parts.port)
        for _ in range(3):
            assert agent.heartbeat(b'{"load": 0.4}')[0] == 202
        assert agent.opened == 1 and agent.session is session, "the agent had to open a new session"
        assert again.sessions.taken_up == 1
        wait_for(lambda: (n := again.view.nodes.get("s-restart")) is not None and n.load == 0.4, 10)
        handle, _, ticket = session.id.partition(".")
        forged = f"{handle}.{ticket[:-2]}{'A' if ticket[-2] != 'A' else 'B'}{ticket[-1]}"
        r = session_post(client, forged, 50, b'{"load": 0.9}', session.key)
        assert r.status_code == 401 and r.json()["code"] == "unknown_session"
        r = session_post(client, session.id, 1, b'{"load": 0.9}', session.key)  # not above the last seq
        assert r.status_code == 409 and r.json()["code"] == "replay"
