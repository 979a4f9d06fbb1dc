"""Rate limits of heartbeat sessions on a real server on 127.0.0.1: the per-node heartbeat
limit holds across sessions, and handshakes are limited per node (successful ones) and
per client address (failed ones)."""

from __future__ import annotations

import hashlib
import os
import time

import httpx
import pytest
from service_helpers import Node, make_service, write_config

from tests.test_sessions import enrolled, served, session_post  # noqa: F401 - served is a fixture
from wyneos_core.service.identity import AuthError, KeyCache, b64e
from wyneos_core.service.limits import RateLimiter
from wyneos_core.service.server import ServerThread
from wyneos_core.service.session_client import SessionClient, SessionError
from wyneos_core.service.sessions import FAILED_BURST, HANDSHAKE_BURST, SessionTable, handshake_bytes, mac


def test_a_new_session_after_a_429_gets_no_fresh_burst(tmp_path):
    service = make_service(write_config(tmp_path), heartbeat_burst=3, heartbeat_rate=0.01)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        node = enrolled(service, client, "s-9")
        agent = SessionClient(url, node.id, node.key)
        first = agent.open()
        codes = [session_post(client, first.id, seq, b'{"load": 0.3}', first.key).status_code for seq in (1, 2, 3, 4)]
        assert codes == [202, 202, 202, 429]
        for _ in range(3):  # a node that opens a new session after each 429 is still over its rate
            session = agent.open()
            r = session_post(client, session.id, 1, b'{"load": 0.3}', session.key)
            assert r.status_code == 429 and r.json()["code"] == "rate_limited", r.text
        # batches count against the same bucket
        body = b'{"heartbeats": [{"session": "%s", "seq": 2, "mac": "%s", "body": "{}"}]}'
        from wyneos_core.service.sessions import mac

        r = client.post("/v1/heartbeats", content=body % (session.id.encode(), mac(session.key, 2, b"{}").encode()))
        assert r.json()["results"][0]["code"] == "rate_limited"


def test_handshakes_are_limited_per_node_and_failed_ones_per_address(served):
    service, client, url = served
    node = enrolled(service, client, "s-10")
    agent = SessionClient(url, node.id, node.key)
    opened = 0
    try:
        for _ in range(HANDSHAKE_BURST + 5):
            agent.open()
            opened += 1
    except SessionError as exc:
        assert exc.status == 429 and exc.code == "rate_limited"
    assert opened == HANDSHAKE_BURST
    # junk handshakes naming the node (a stranger's signature) do not spend the node's budget
    # but the address's budget of failures: then refused before any check
    stranger = Node("s-10")
    # the failure budget as configured, but refilling too slowly to matter however slow this
    # machine answers (at 5/s, a loaded machine refilled it between requests)
    service.sessions.failures = RateLimiter(1e-6, FAILED_BURST, max_keys=65_536)
    codes = []
    for _ in range(FAILED_BURST + 5):
        nonce = client.post("/v1/sessions/nonce").json()["nonce"]
        agent_key = b64e(bytes(range(1, 33)))
        r = client.post("/v1/sessions", json={"node_id": "s-10", "nonce": nonce, "agent_key": agent_key,
                                              "signature": b64e(stranger.key.sign(handshake_bytes("s-10", nonce,
                                                                                                  agent_key)))})
        codes.append(r.json()["code"])
    assert codes[:FAILED_BURST] == ["bad_signature"] * FAILED_BURST
    assert set(codes[FAILED_BURST:]) == {"rate_limited"}
    assert len(service.sessions) == 2  # MAX_PER_NODE of the node's own; nothing else opened


def test_a_ticket_issued_under_the_shared_secret_is_taken_up_and_no_other_is():
    """``issue_ticket`` seals a session as the handshake does: a table holding the same
    secret takes it up on the first heartbeat (MAC checked with the ticket's key); a
    table of another secret, a revoked node or a bent ticket get ``unknown_session``."""
    keys = KeyCache()
    keys.set("n-1", hashlib.sha256(b"n-1").digest())
    secret = os.urandom(32)
    issuer, server = SessionTable(keys, lambda f, p: {}, secret=secret), SessionTable(keys, lambda f, p: {}, secret=secret)
    other = SessionTable(keys, lambda f, p: {}, secret=os.urandom(32))
    key, now = os.urandom(32), time.time()
    sid = issuer.issue_ticket("n-1", key, now + 60)
    body = b'{"load": 0.5}'
    with server.lock:
        assert server.check(sid, 1, mac(key, 1, body), body, now).node_id == "n-1"
    assert server.taken_up == 1
    for table, session_id in ((other, sid), (server, sid[:-2] + ("AA" if sid[-2:] != "AA" else "BB"))):
        with table.lock, pytest.raises(AuthError) as caught:
            table.check(session_id, 1, mac(key, 1, body), body, now)
        assert caught.value.code == "unknown_session"
    with server.lock, pytest.raises(AuthError) as caught:
        server.check(sid, 2, mac(os.urandom(32), 2, body), body, now)
    assert caught.value.code == "bad_mac"
    with pytest.raises(ValueError):
        issuer.issue_ticket("n-1", b"short", now + 60)


def test_a_forwarded_for_header_does_not_pick_the_address_whose_failures_count(served):
    """The failed-handshake budget is the peer's own: an ``X-Forwarded-For`` header (which
    any local client can write) neither escapes a spent budget nor spends another's."""
    service, client, url = served
    enrolled(service, client, "x-1")
    service.sessions.failures = RateLimiter(1e-6, FAILED_BURST, max_keys=65_536)  # no refill during the test
    codes = []
    for i in range(FAILED_BURST + 3):
        nonce = client.post("/v1/sessions/nonce").json()["nonce"]
        r = client.post("/v1/sessions", headers={"x-forwarded-for": f"10.0.{i // 250}.{i % 250}"},
                        json={"node_id": "x-1", "nonce": nonce, "agent_key": b64e(bytes(range(1, 33))),
                              "signature": b64e(bytes(64))})
        codes.append(r.json()["code"])
    assert codes[:FAILED_BURST] == ["bad_signature"] * FAILED_BURST
    assert set(codes[FAILED_BURST:]) == {"rate_limited"}
