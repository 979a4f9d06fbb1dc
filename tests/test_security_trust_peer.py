"""Issue 18 items 10 and 11 on real servers on 127.0.0.1: only authenticated misbehaviour
lowers a node's trust, and the peer endpoint and witness probes stay bounded against
tarpits and silent sockets."""

from __future__ import annotations

import httpx
from service_helpers import Node, add_token, make_service, wait_for, write_config

from wyneos_core.builtin.trust import explain
from wyneos_core.service.server import ServerThread


def test_junk_signatures_naming_a_node_do_not_count_as_its_refusals(tmp_path):
    service = make_service(write_config(tmp_path, stale=5, offline=10), heartbeat_burst=1000, heartbeat_rate=100.0)
    node, forger = Node("edge-1"), Node("edge-1")  # the forger names edge-1 but holds another key
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        body, headers = node.enrol_request(add_token(service))
        assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        b, h = node.heartbeat()
        assert client.post("/v1/heartbeats", content=b, headers=h).status_code == 202

        def refusals():
            return {s["signal"]: s for s in explain(service.orchestrator, "edge-1")["signals"]}["refusals"]

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
