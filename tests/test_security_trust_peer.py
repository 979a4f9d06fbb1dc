"""Issue 18 items 10 and 11 on real servers on 127.0.0.1: only authenticated misbehaviour
lowers a node's trust, and the peer endpoint and witness probes stay bounded against
tarpits and silent sockets."""

from __future__ import annotations

import socket
import threading
import time

import httpx
from hostile_server import HostileServer, Trickle
from service_helpers import Node, add_token, make_service, wait_for, write_config

from wyneos_core.builtin.trust import explain
from wyneos_core.licensing.keys import fingerprint, generate_key, public_bytes
from wyneos_core.service import peer as peer_module
from wyneos_core.service.orchestrator_key import OrchestratorKey
from wyneos_core.service.peer import PeerNode
from wyneos_core.service.server import ServerThread


def test_junk_signatures_naming_a_node_do_not_count_as_its_refusals(tmp_path):
    service = make_service(write_config(tmp_path, stale=5, offline=10), heartbeat_burst=1000, heartbeat_rate=100.0)
    node, forger = Node("edge-1"), Node("edge-1")  # the forger names edge-1 but holds another key
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        body, headers = node.enrol_request(add_token(service))
        assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        b, h = node.heartbeat()
        assert client.post("/v1/heartbeats", content=b, headers=h).status_code == 202

        def refusals():  # {} until the node's first trust step
            found = explain(service.orchestrator, "edge-1")
            return {s["signal"]: s for s in found["signals"]}["refusals"] if found else {"negative": 0.0}

        for _ in range(30):
            b, h = forger.heartbeat()
            r = client.post("/v1/heartbeats", content=b, headers=h)
            assert r.status_code == 401 and r.json()["code"] == "bad_signature"
        junk = {**node.batch_item(), "signature": "A" * 86}
        r = client.post("/v1/heartbeats", json={"heartbeats": [junk] * 5})
        assert r.json()["refused"] == 5
        # a replay of the node's own, signed heartbeat is its own misbehaviour: counted
        b, h = node.heartbeat()
        assert client.post("/v1/heartbeats", content=b, headers=h).status_code == 202
        assert client.post("/v1/heartbeats", content=b, headers=h).status_code == 409
        wait_for(lambda: refusals()["negative"] > 0)
        assert refusals()["negative"] <= 1.0, refusals()  # the one replay, not the 35 forgeries


# -- item 10: witness probes and the peer endpoint ----------------------------------------------


def _knows(peer, okey, entries):
    from wyneos_core.service.peer import NEIGHBOURS_FORMAT

    assert peer.update(okey.seal(NEIGHBOURS_FORMAT, {"node": peer.node_id, "tick": 1, "issued_at": int(time.time()),
                                                     "neighbours": entries}))


def _entry(peer):
    return {"id": peer.node_id, "address": peer.address, "fingerprint": fingerprint(public_bytes(peer.key))}


def test_tarpit_neighbours_cannot_stretch_a_probe_round(tmp_path):
    okey = OrchestratorKey.for_state(tmp_path / "state.db")
    honest = [PeerNode(n, generate_key(), okey.keyring(), interval=60).start() for n in ("b", "c")]
    prober = PeerNode("a", generate_key(), okey.keyring(), interval=60)

    def tarpit(path, body):  # a byte every 0.3 s: an answer that would take an hour
        return 200, Trickle(b'{"node_id": "' + b"t" * 12000 + b'"}', every=0.3)

    try:
        with HostileServer(tarpit) as pit:
            address = pit.url.rsplit("//", 1)[1]
            tarpits = [{"id": f"t{i}", "address": address, "fingerprint": fingerprint(public_bytes(generate_key()))}
                       for i in range(10)]
            _knows(prober, okey, [*tarpits[:5], *map(_entry, honest), *tarpits[5:]])
            done = threading.Event()
            worker = threading.Thread(target=lambda: (prober.probe_round(), done.set()), daemon=True)
            worker.start()
            assert done.wait(60), "a probe round was held by tarpits"  # a liveness bound, not a speed
            seen = {o["subject"]: o["reachable"] for o in prober.report()}
            assert seen == {"b": True, "c": True, **{f"t{i}": False for i in range(10)}}
    finally:
        for p in (*honest, prober):
            p.close()


def test_observations_carry_their_age_and_stale_ones_count_for_nothing(tmp_path, monkeypatch):
    okey = OrchestratorKey.for_state(tmp_path / "state.db")
    b = PeerNode("b", generate_key(), okey.keyring(), interval=60).start()
    prober = PeerNode("a", generate_key(), okey.keyring(), interval=60)
    try:
        _knows(prober, okey, [_entry(b)])
        prober.probe_round()
        (obs,) = prober.report()
        assert obs["reachable"] is True and 0 <= obs["age_s"] < peer_module.MAX_OBSERVATION_AGE
        b.close()  # the neighbour dies; no new round runs: its old observation ages out
        monkeypatch.setattr(peer_module, "MAX_OBSERVATION_AGE", 0.2)
        wait_for(lambda: prober.report() == [], timeout=10)
    finally:
        prober.close()
    # the orchestrator does not count an observation older than the bound either
    from wyneos_core.service.signed_intake import observations

    fresh = {"subject": "b", "reachable": True, "rtt_ms": 1.0, "last_seq": 3, "age_s": 2.5}
    assert [o.subject for o in observations("a", [fresh])] == ["b"]
    assert observations("a", [{**fresh, "age_s": 31.0}]) == ()


def test_silent_sockets_on_the_peer_endpoint_hold_a_bounded_number_of_threads(tmp_path):
    okey = OrchestratorKey.for_state(tmp_path / "state.db")
    target = PeerNode("b", generate_key(), okey.keyring(), interval=60).start()
    prober = PeerNode("a", generate_key(), okey.keyring(), interval=60)
    host, port = target.address.split(":")
    base = threading.active_count()
    silent = []
    try:
        for _ in range(300):
            silent.append(socket.create_connection((host, int(port)), timeout=10))
        time.sleep(0.5)  # let the server accept what it will
        assert threading.active_count() - base <= peer_module.MAX_PEER_CONNECTIONS + 4
        # silent sockets are closed at the deadline: then an honest probe is answered
        assert silent[0].recv(1) == b""
        _knows(prober, okey, [_entry(target)])
        wait_for(lambda: prober.probe_round() and prober.report()[0]["reachable"], timeout=30)
    finally:
        for s in silent:
            s.close()
        target.close()
        prober.close()
