"""Rate limits of ``wyneos serve`` (issue 9, deliver 3): enrolment attempts per client
address, heartbeats per node, memory bounded however many keys or requests come."""

from __future__ import annotations

import httpx
from service_helpers import Node, add_token, make_service, write_config

from wyneos_core.service.limits import RateLimiter
from wyneos_core.service.server import ServerThread


def test_enrolment_attempts_are_limited_per_client_address(tmp_path):
    service = make_service(write_config(tmp_path), enrol_rate=0.001, enrol_burst=3)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(3):
            body, headers = Node("guess").enrol_request("wyn_guess")
            assert client.post("/v1/enrol", content=body, headers=headers).status_code == 403
        token = add_token(service)
        for _ in range(20):  # even a good token waits: the address has used its attempts
            body, headers = Node("edge-1").enrol_request(token)
            r = client.post("/v1/enrol", content=body, headers=headers)
            assert r.status_code == 429 and r.json()["code"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1
        assert "edge-1" not in service.orchestrator.registry
        with service.db_lock:
            assert service.db.node_keys() == [] and [t["uses_left"] for t in service.db.enrol_tokens()] == [1]
        assert client.get("/healthz").status_code == 200
        assert 'wyneos_enrolments_total{outcome="rate_limited"} 20.0' in client.get("/metrics").text


def test_heartbeats_are_limited_per_node_and_a_flood_costs_no_memory(tmp_path):
    service = make_service(write_config(tmp_path), heartbeat_rate=0.001, heartbeat_burst=5)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        flooder, quiet = Node("flooder"), Node("quiet")
        for node in (flooder, quiet):
            body, headers = node.enrol_request(add_token(service))
            assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        statuses = []
        first = None
        for _ in range(300):
            body, headers = flooder.heartbeat()
            first = first or (body, headers)
            statuses.append(client.post("/v1/heartbeats", content=body, headers=headers).status_code)
        assert statuses[:5] == [202] * 5 and set(statuses[5:]) == {429}
        # a replay is refused as a replay and takes nothing from anyone's budget
        assert client.post("/v1/heartbeats", content=first[0], headers=first[1]).status_code == 409
        # the refused heartbeats left no nonce behind; one bucket per node that got through
        assert len(service.nonces._seen) <= 5 + 2  # five heartbeats, two enrolments
        assert len(service.heartbeat_limit) == 1
        # another node is not held up by the flooder
        body, headers = quiet.heartbeat()
        assert client.post("/v1/heartbeats", content=body, headers=headers).status_code == 202
        # in a batch, the flooder's items are refused one by one
        r = client.post("/v1/heartbeats", json={"heartbeats": [flooder.batch_item(), quiet.batch_item()]})
        assert r.status_code == 202 and r.json()["accepted"] == 1 and r.json()["results"][0]["status"] == 429
        # unsigned or badly signed floods get no bucket at all
        for i in range(50):
            body, headers = Node(f"stranger-{i}").heartbeat()
            assert client.post("/v1/heartbeats", content=body, headers=headers).status_code == 401
        assert len(service.heartbeat_limit) == 2


def test_rate_limiter_memory_is_bounded_and_tokens_refill():
    limiter = RateLimiter(rate=2.0, burst=2, max_keys=100)
    for i in range(10_000):
        assert limiter.allow(f"k{i}", 0.0)
    assert len(limiter) == 100
    assert limiter.allow("a", 0.0) and limiter.allow("a", 0.0) and not limiter.allow("a", 0.0)
    assert limiter.retry_after("a") == 0.5
    assert not limiter.allow("a", 0.25) and limiter.allow("a", 0.75)
