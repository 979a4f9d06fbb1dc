"""The red-team suite for ``wyneos relay`` (issue 18 items 5-8): a relay on 127.0.0.1 in
front of a real orchestrator, or of a hostile one (``hostile_server``), takes hostile
clients and hostile answers; each case checks what the relay must do and that honest
agents behind it go on being served. Every loop is bounded; sockets time out."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from hostile_server import Huge, HostileServer, Trickle
from service_helpers import add_token, make_service, wait_for, write_config

from tests.test_sessions import enrolled, served  # noqa: F401 - served is a fixture
from tests.test_sessions_relay import RelayThread
from wyneos_core.service.agent import Agent
from wyneos_core.service.relay import MAX_ITEM, Relay, RelayError, check_bind
from wyneos_core.service.server import ServerThread
from wyneos_core.service.session_client import SessionClient, SessionError

LIMITS = {"max_header_bytes": 16384, "header_timeout": 1.5, "body_timeout": 1.5, "max_connections": 16}


def _address(url: str) -> tuple[str, int]:
    host, port = url.rsplit("//", 1)[1].split(":")
    return host, int(port)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def _upstream_ok(path: str, body: bytes):
    if path == "/v1/heartbeats":
        n = len(json.loads(body)["heartbeats"])
        return 202, {"accepted": n, "refused": 0, "results": [], "server_time": time.time()}
    return 200, {"ok": True}


def _signed_item(i: int) -> dict:
    return {"node": f"n-{i}", "timestamp": "1", "nonce": "x" * 16, "signature": "s", "body": "{}"}


# -- item 5: serve's limits ------------------------------------------------------------------


def test_a_giant_head_is_cut_and_silent_sockets_are_closed_and_shed():
    with HostileServer(_upstream_ok) as up, RelayThread(Relay(up.url), **LIMITS) as url:
        sock = socket.create_connection(_address(url), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"b" * 20000)
        assert _read_all(sock).startswith(b"HTTP/1.1 431 ")
        sock.close()
        silent = [socket.create_connection(_address(url), timeout=10) for _ in range(40)]
        try:
            # more silent sockets than max_connections: honest requests are still served
            r = httpx.post(url + "/v1/heartbeats", json={"heartbeats": [_signed_item(1)]}, timeout=10)
            assert r.status_code == 202 and r.json()["accepted"] == 1
            assert httpx.get(url + "/healthz", timeout=10).status_code == 200
            # and a silent socket is closed (shed, or at the head deadline), not held for ever:
            # recv returns b"" (a socket left open would time out, failing the test)
            assert silent[-1].recv(1) == b""
        finally:
            for s in silent:
                s.close()


def test_a_huge_upstream_answer_is_refused_at_the_cap_unread():
    size = 200 * 1024 * 1024

    def huge(path: str, body: bytes):
        return 202, Huge(size, prefix=b'{"accepted": 1, "results": [], "pad": "')

    with HostileServer(huge) as up, RelayThread(Relay(up.url, timeout=20), **LIMITS) as url:
        r = httpx.post(url + "/v1/heartbeats", json={"heartbeats": [_signed_item(1)]}, timeout=30)
        assert r.status_code == 503 and r.json()["results"][0]["code"] == "upstream_unreachable"
        assert "limit" in r.json()["results"][0]["error"]
        wait_for(lambda: up.written and up.stop.wait(0.2) is False and up.written[-1] < size, timeout=10)


def test_a_trickled_upstream_answer_costs_one_deadline_then_agents_go_on():
    calls = []

    def trickle_first(path: str, body: bytes):
        calls.append(path)
        if len(calls) == 1:  # one byte every 0.3 s: it would take an hour
            return 202, Trickle(b"{" + b" " * 20000 + b"}", every=0.3)
        return _upstream_ok(path, body)

    with HostileServer(trickle_first) as up, RelayThread(Relay(up.url, timeout=1.0), **LIMITS) as url:
        r = httpx.post(url + "/v1/heartbeats", json={"heartbeats": [_signed_item(1)]}, timeout=30)
        assert r.status_code == 503 and "deadline" in r.json()["results"][0]["error"]
        r = httpx.post(url + "/v1/heartbeats", json={"heartbeats": [_signed_item(2)]}, timeout=30)
        assert r.status_code == 202 and r.json()["accepted"] == 1
        # a pass-through request has the same one deadline
        calls.clear()
        r = httpx.post(url + "/v1/sessions/nonce", timeout=30)
        assert r.status_code == 503 and r.json()["code"] == "upstream_unreachable"


# -- item 6: one client cannot make the relay refuse everyone ---------------------------------


def test_one_oversized_or_malformed_item_is_refused_alone(served):
    service, client, url = served
    nodes = [enrolled(service, client, f"b-{i}") for i in range(3)]
    with RelayThread(Relay(url, flush=0.2), **LIMITS) as relay_url:
        honest = [n.batch_item(load=0.1 * (i + 1)) for i, n in enumerate(nodes)]
        big = {**nodes[0].batch_item(), "body": "x" * (7 * 1024 * 1024)}
        odd = {"node": "b-1", "body": "{}", "extra": [1] * 1000}
        r = httpx.post(relay_url + "/v1/heartbeats", json={"heartbeats": [honest[0], big, honest[1], odd, honest[2]]},
                       timeout=30)
        assert r.status_code == 202, r.text
        answer = r.json()
        assert answer["accepted"] == 3
        assert [(x["index"], x["status"]) for x in answer["results"]] == [(1, 413), (3, 422)]
        assert str(MAX_ITEM) in answer["results"][0]["error"]
    for i in range(3):
        wait_for(lambda i=i: client.get(f"/v1/nodes/b-{i}").json()["load"] == round(0.1 * (i + 1), 1))


def test_a_batch_the_orchestrator_finds_too_large_is_split_not_refused(tmp_path):
    service = make_service(write_config(tmp_path, stale=5, offline=10), max_body_bytes=4096, heartbeat_burst=50)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client, \
            RelayThread(Relay(url, flush=0.3), **LIMITS) as relay_url:
        nodes = [enrolled(service, client, f"c-{i}") for i in range(12)]
        items = [n.batch_item(load=0.5) for n in nodes]  # ~500 bytes each: 6 KB together
        r = httpx.post(relay_url + "/v1/heartbeats", json={"heartbeats": items}, timeout=30)
        assert r.status_code == 202 and r.json()["accepted"] == 12, r.text


# -- item 7: the whole answer is authenticated; a clock refusal resynchronises -----------------


def test_a_relay_that_moves_the_server_time_is_caught_and_cannot_silence_the_agent(served, tmp_path):
    service, client, url = served
    node = enrolled(service, client, "t-1")

    class Shifting(Relay):  # a genuine ack, with server_time moved by +80,000 s
        def forward(self, items):
            return [(s, {**a, "server_time": a["server_time"] + 80_000} if s == 202 else a)
                    for s, a in super().forward(items)]

    with RelayThread(Shifting(url, flush=0.05), **LIMITS) as relay_url:
        agent = SessionClient(relay_url, node.id, node.key)
        with pytest.raises(SessionError, match="no valid MAC"):
            agent.heartbeat(b'{"load": 0.5}')
    # an agent whose clock offset was moved anyway (by whatever answer) drops it at the
    # first refusal for its timestamp, and its next heartbeat is taken
    token = add_token(service, "t-2")
    agent = Agent(url, "t-2", state_dir=tmp_path / "agent", token=token)
    agent.enrol()
    assert agent.heartbeat() == 202
    agent.offset = 80_000.0
    assert agent.heartbeat() == 422
    assert agent.offset == 0.0
    assert agent.heartbeat() == 202


# -- item 8: no read API through a relay; bind check; Host header on serve --------------------


def test_the_relay_never_passes_on_the_read_api_of_a_tokenless_server(served):
    service, client, url = served
    assert client.get("/v1/nodes").status_code == 200  # token-less, on loopback
    with RelayThread(Relay(url), **LIMITS) as relay_url:
        for path in ("/v1/nodes", "/v1/actions", "/metrics", "/", "/v1/ticks", "/v1/nodes/x", "/docs",
                     "/openapi.json", "/v1/mesh"):
            r = httpx.get(relay_url + path, timeout=10)
            assert r.status_code == 404 and r.json()["code"] == "not_relayed", path
        r = httpx.post(relay_url + "/login", content=b"token=x", timeout=10)
        assert r.status_code == 404
        assert httpx.post(relay_url + "/v1/sessions/nonce", timeout=10).status_code == 200  # agent routes pass


def test_bind_check_refuses_to_expose_a_loopback_orchestrator():
    with pytest.raises(RelayError, match="loopback"):
        check_bind("0.0.0.0", "http://127.0.0.1:8420")
    check_bind("127.0.0.1", "http://127.0.0.1:8420")
    check_bind("0.0.0.0", "http://10.1.2.3:8420")


def test_a_tokenless_server_refuses_foreign_host_headers(served):
    service, client, url = served
    for host in ("evil.example", "evil.example:8420", "127.0.0.1.evil.example", "", "[::2]:80"):
        r = httpx.get(url + "/v1/nodes", headers={"host": host}, timeout=10)
        assert r.status_code == 421 and r.json()["code"] == "bad_host", host
    port = _address(url)[1]
    for host in (f"127.0.0.1:{port}", "localhost", f"localhost:{port}", "[::1]:8420", "127.0.0.2"):
        assert httpx.get(url + "/v1/nodes", headers={"host": host}, timeout=10).status_code == 200, host
    # no Host header at all (HTTP/1.0 allows it): refused as well
    with socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(b"GET /v1/nodes HTTP/1.0\r\n\r\n")
        answer = _read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"421" and json.loads(body)["code"] == "bad_host", answer[:300]


def test_wyneos_relay_refuses_to_expose_a_loopback_orchestrator():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "relay", "--upstream", "http://127.0.0.1:8420",
                           "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "loopback" in done.stderr and "--host 127.0.0.1" in done.stderr


def test_a_typed_batch_keeps_the_limits_item_by_item(served):
    """A batch whose items all decode typed at once (the relay's fast path) is bounded as
    the item-by-item path bounds it: an item over ``MAX_ITEM`` is refused alone (413);
    a null field, a true or a fractional ``seq`` are refused alone (422); the honest
    items around them are forwarded and applied."""
    service, client, url = served
    nodes = [enrolled(service, client, f"t-{i}") for i in range(3)]
    with RelayThread(Relay(url, flush=0.2), **LIMITS) as relay_url:
        honest = [n.batch_item(load=0.1 * (i + 1)) for i, n in enumerate(nodes)]
        big = {**nodes[0].batch_item(), "body": "y" * (MAX_ITEM + 10)}  # typed well, only too large
        r = httpx.post(relay_url + "/v1/heartbeats", json={"heartbeats": [honest[0], big, honest[1]]}, timeout=30)
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == 2
        assert [(x["index"], x["status"]) for x in r.json()["results"]] == [(1, 413)]
        odd = [{"session": None, "seq": 1, "mac": "0" * 32, "body": "{}"},
               {"session": "s", "seq": True, "mac": "0" * 32, "body": "{}"},
               {"session": "s", "seq": 1.5, "mac": "0" * 32, "body": "{}"}]
        r = httpx.post(relay_url + "/v1/heartbeats", json={"heartbeats": [*odd, honest[2]]}, timeout=30)
        assert r.status_code == 202, r.text
        assert [(x["index"], x["status"]) for x in r.json()["results"]] == [(0, 422), (1, 422), (2, 422)]
        too_many = b'{"heartbeats":[' + b",".join([b'{"body":"{}"}'] * 20_001) + b"]}"
        r = httpx.post(relay_url + "/v1/heartbeats", content=too_many, timeout=30)
        assert r.status_code == 422 and "20000" in r.json()["error"]
    for i in range(3):
        wait_for(lambda i=i: client.get(f"/v1/nodes/t-{i}").json()["load"] == round(0.1 * (i + 1), 1))
