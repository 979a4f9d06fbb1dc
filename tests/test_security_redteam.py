"""The red-team suite (issue 9, deliver 6): a real ``wyneos serve`` server on 127.0.0.1
takes hostile requests one after the other; for each, the answer's status is what it
must be, the state file and ``/v1/nodes`` are exactly as before (a refused request
changes nothing), the heartbeat queue holds nothing new, and ``/healthz`` still
answers. Ticks are an hour apart here, so nothing else writes the state file while the
cases run. Every loop is bounded; sockets time out.

Hostile *files* (config, rulesets, scenarios, licences, state files) are in
test_security_files.py and test_security_state.py; the disk-full fault in
test_security_disk_full.py.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from service_helpers import Node, add_token, make_service, write_config

from wyneos_core.licensing.keys import generate_key, public_bytes
from wyneos_core.service.identity import b64e, sign_request
from wyneos_core.service.server import ServerThread

TOKEN = "red-team-operator-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
LIMITS = {"read_token": TOKEN, "max_header_bytes": 16384, "header_timeout": 1.5, "body_timeout": 1.5,
          "max_connections": 64, "heartbeat_burst": 10_000, "heartbeat_rate": 1000.0}


class Target:
    def __init__(self, service: Any, url: str, client: httpx.Client, state: str) -> None:
        self.service, self.url, self.client, self.state = service, url, client, state
        self.edge1, self.edge2 = Node("edge-1"), Node("edge-2")
        self.host, self.port = url.rsplit("//", 1)[1].split(":")
        self.port = int(self.port)

    # -- what must not change ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        db = sqlite3.connect(f"file:{self.state}?mode=ro", uri=True)
        try:
            digest = hashlib.sha256()
            for table in ("meta", "nodes", "ticks", "actions", "action_events", "node_keys", "enrol_tokens",
                          "action_acks"):
                for row in db.execute(f"SELECT * FROM {table} ORDER BY 1"):  # noqa: S608 - fixed names
                    digest.update(repr(row).encode())
        finally:
            db.close()
        nodes = self.client.get("/v1/nodes", headers=AUTH)
        assert nodes.status_code == 200
        return {"state": digest.hexdigest(), "nodes": nodes.json(), "queue": len(self.service.orchestrator.intake),
                "registry": sorted(n.id for n in self.service.orchestrator.registry),
                "keys": self.service.keys.active_count()}

    # -- request helpers -----------------------------------------------------------------------

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        return self.client.post(path, content=body, headers={"content-type": "application/json", **(headers or {})}
                                ).status_code

    def heartbeat(self, body: Any, node: Node | None = None, signer: Node | None = None, **sign: Any) -> int:
        node = node or self.edge1
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = sign_request((signer or node).key, node.id, "POST", "/v1/heartbeats", raw, **sign)
        return self.post("/v1/heartbeats", raw, headers)

    def enrol(self, body: dict[str, Any] | bytes, signer: Node) -> int:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.post("/v1/enrol", raw, sign_request(signer.key, signer.id, "POST", "/v1/enrol", raw))

    def raw(self, data: bytes, *, then: Callable[[socket.socket], None] | None = None) -> str:
        """Send raw bytes; the status line's code, or 'closed'."""
        sock = socket.create_connection((self.host, self.port), timeout=10)
        try:
            try:
                sock.sendall(data)
                if then is not None:
                    then(sock)
            except (BrokenPipeError, ConnectionResetError):
                return "closed"
            answer = b""
            try:
                for _ in range(64):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                    if b"\r\n\r\n" in answer:
                        break
            except ConnectionResetError:
                pass
            return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"
        finally:
            sock.close()


def _now() -> float:
    return time.time()


def _nested(depth: int) -> bytes:
    return b'{"metadata": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


def _pub(node: Node) -> str:
    return b64e(public_bytes(node.key))


def _giant_head(t: Target) -> str:
    def pad(sock: socket.socket) -> None:
        for _ in range(2048):  # up to 128 MB of header lines
            sock.sendall((b"X-Pad: " + b"a" * 1000 + b"\r\n") * 64)
    return t.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", then=pad)


def _burst(t: Target) -> int:
    socks = [socket.create_connection((t.host, t.port), timeout=10) for _ in range(3 * LIMITS["max_connections"])]
    try:
        for s in socks[::2]:
            s.sendall(b"GET /v1/nodes HTTP/1.1\r\nX-Slow: ")
        with httpx.Client(base_url=t.url, timeout=10) as fresh:  # a new connection gets in, too
            assert fresh.get("/healthz").status_code == 200
        return t.client.get("/healthz").status_code  # the operator's keep-alive connection was not shed
    finally:
        for s in socks:
            s.close()


def _ack(t: Target, body: bytes) -> int:
    path = "/v1/nodes/edge-1/actions/ack"
    return t.post(path, body, sign_request(t.edge1.key, "edge-1", "POST", path, body))


BAD_UTF8 = b'{"timestamp": 1, "metadata": {"x": "\xff\xfe"}}'

#: (case id, statuses allowed, the hostile request)
CASES: list[tuple[str, set, Callable[[Target], Any]]] = [
    # -- heartbeats -----------------------------------------------------------------------------
    ("hb-unsigned", {401}, lambda t: t.post("/v1/heartbeats", json.dumps({"timestamp": _now()}).encode(),
                                            {"x-wyneos-node": "edge-1"})),
    ("hb-no-headers", {401}, lambda t: t.post("/v1/heartbeats", b'{"timestamp": 1}')),
    ("hb-wrong-key", {401}, lambda t: t.heartbeat({"timestamp": _now()}, signer=Node("edge-1"))),
    ("hb-unknown-node", {401}, lambda t: t.heartbeat({"timestamp": _now()}, node=Node("ghost"))),
    ("hb-orchestrator", {401}, lambda t: t.heartbeat({"timestamp": _now()}, node=Node("orchestrator"))),
    ("hb-tampered", {401}, lambda t: t.post("/v1/heartbeats", b'{"load": 0.9}', sign_request(
        t.edge1.key, "edge-1", "POST", "/v1/heartbeats", b'{"load": 0.1}'))),
    ("hb-other-path-signature", {401}, lambda t: t.post("/v1/heartbeats", b"{}", sign_request(
        t.edge1.key, "edge-1", "POST", "/v1/enrol", b"{}"))),
    ("hb-stale-timestamp", {409}, lambda t: t.heartbeat({"timestamp": _now()}, timestamp=_now() - 3600)),
    ("hb-future-timestamp", {409}, lambda t: t.heartbeat({"timestamp": _now()}, timestamp=_now() + 3600)),
    ("hb-nan-signed-time", {401, 409}, lambda t: t.post("/v1/heartbeats", b"{}", {
        **sign_request(t.edge1.key, "edge-1", "POST", "/v1/heartbeats", b"{}"), "x-wyneos-timestamp": "nan"})),
    ("hb-surrogate-metadata", {422}, lambda t: t.heartbeat({"timestamp": _now(), "metadata": {"x": "\ud800"}})),
    ("hb-surrogate-key", {422}, lambda t: t.heartbeat({"timestamp": _now(), "metadata": {"\udfff": 1}})),
    ("hb-surrogate-licence-ref", {422}, lambda t: t.heartbeat({"timestamp": _now(), "licence_ref": "\ud800"})),
    ("hb-surrogate-deep", {422}, lambda t: t.heartbeat({"timestamp": _now(), "metadata": {"a": [{"b": "\udbff"}]}})),
    ("hb-customer", {422}, lambda t: t.heartbeat({"timestamp": _now(), "metadata": {"customer": "globex"}})),
    ("hb-restrictions", {422}, lambda t: t.heartbeat({"timestamp": _now(), "metadata": {"restrictions": []}})),
    ("hb-not-json", {422}, lambda t: t.heartbeat(b"{not json")),
    ("hb-json-array", {422}, lambda t: t.heartbeat(b"[1, 2]")),
    ("hb-invalid-utf8", {422}, lambda t: t.heartbeat(BAD_UTF8)),
    ("hb-nested-5000", {422}, lambda t: t.heartbeat(_nested(5_000))),
    ("hb-nested-40", {422}, lambda t: t.heartbeat(_nested(40))),
    ("hb-load-nan", {422}, lambda t: t.heartbeat(b'{"load": NaN}')),
    ("hb-load-negative", {422}, lambda t: t.heartbeat({"load": -1})),
    ("hb-load-string", {422}, lambda t: t.heartbeat({"load": "high"})),
    ("hb-load-huge", {422}, lambda t: t.heartbeat({"load": 1e308})),
    ("hb-timestamp-1e300", {422}, lambda t: t.heartbeat({"timestamp": 1e300})),
    ("hb-timestamp-string", {422}, lambda t: t.heartbeat({"timestamp": "now"})),
    ("hb-for-another-node", {403}, lambda t: t.heartbeat({"node_id": "edge-2", "timestamp": _now()})),
    ("hb-unknown-field", {422}, lambda t: t.heartbeat({"timestamp": _now(), "tier": "gold"})),
    ("hb-metadata-list", {422}, lambda t: t.heartbeat({"timestamp": _now(), "metadata": [1]})),
    ("hb-metadata-too-big", {413, 422}, lambda t: t.heartbeat({"timestamp": _now(), "metadata": {"x": "y" * 60_000}})),
    ("hb-body-too-big", {413}, lambda t: t.heartbeat({"metadata": {"x": "y" * 70_000}})),
    ("hb-content-length-lie", {"413"}, lambda t: t.raw(
        b"POST /v1/heartbeats HTTP/1.1\r\nHost: x\r\nx-wyneos-node: edge-1\r\ncontent-length: 99999999999\r\n\r\n")),
    ("hb-content-length-junk", {"400", "422"}, lambda t: t.raw(
        b"POST /v1/heartbeats HTTP/1.1\r\nHost: x\r\nx-wyneos-node: edge-1\r\ncontent-length: 1e9\r\n\r\n")),
    ("hb-signature-garbage", {401}, lambda t: t.post("/v1/heartbeats", b"{}", {
        **sign_request(t.edge1.key, "edge-1", "POST", "/v1/heartbeats", b"{}"), "x-wyneos-signature": "!!"})),
    ("hb-node-header-10k", {401, 431}, lambda t: t.post("/v1/heartbeats", b"{}", {
        **sign_request(t.edge1.key, "edge-1", "POST", "/v1/heartbeats", b"{}"), "x-wyneos-node": "n" * 10_000})),
    ("batch-not-a-list", {422}, lambda t: t.post("/v1/heartbeats", b'{"heartbeats": 5}')),
    ("batch-too-many", {413}, lambda t: t.post("/v1/heartbeats", json.dumps(
        {"heartbeats": [{"node": "x"}] * 20_001}).encode())),
    ("batch-malformed-items", {401}, lambda t: t.post("/v1/heartbeats", json.dumps(
        {"heartbeats": [{"node": "edge-1"}, 5, None, {"body": 1}]}).encode())),
    ("batch-surrogate-body", {401}, lambda t: t.post("/v1/heartbeats", json.dumps({"heartbeats": [
        {"node": "edge-1", "timestamp": "1", "nonce": "n", "signature": "s", "body": "\ud800"}]}).encode())),
    ("batch-forged-items", {401}, lambda t: t.post("/v1/heartbeats", json.dumps({"heartbeats": [
        {"node": "edge-1", "timestamp": str(_now()), "nonce": f"n{i}", "signature": "A" * 86, "body": "{}"}
        for i in range(50)]}).encode())),
    ("batch-deep-json", {422}, lambda t: t.post("/v1/heartbeats", b'{"heartbeats": ' + b"[" * 100_000 + b"]" * 100_000
                                                + b"}")),
    # -- enrolment ------------------------------------------------------------------------------
    ("enrol-orchestrator", {422}, lambda t: t.enrol(
        {"node_id": "orchestrator", "public_key": _pub(o := Node("orchestrator")), "token": "wyn_made-up"}, o)),
    ("enrol-bad-token", {403}, lambda t: t.enrol(
        {"node_id": "edge-9", "public_key": _pub(n := Node("edge-9")), "token": "wyn_made-up"}, n)),
    ("enrol-config-node-bad-token", {403}, lambda t: t.enrol(
        {"node_id": "configured", "public_key": _pub(n := Node("configured")), "token": "wyn_x"}, n)),
    ("enrol-no-token", {401}, lambda t: t.enrol({"node_id": "edge-9", "public_key": _pub(n := Node("edge-9"))}, n)),
    ("enrol-key-conflict", {409}, lambda t: t.enrol(
        {"node_id": "edge-1", "public_key": _pub(n := Node("edge-1")), "token": "wyn_x"}, n)),
    ("enrol-body-for-another", {403}, lambda t: t.enrol(
        {"node_id": "edge-8", "public_key": _pub(n := Node("edge-9")), "token": "wyn_x"}, n)),
    ("enrol-short-key", {422}, lambda t: t.enrol(
        {"node_id": "edge-9", "public_key": b64e(b"\x01" * 31), "token": "wyn_x"}, Node("edge-9"))),
    ("enrol-no-proof-of-possession", {401}, lambda t: t.enrol(
        {"node_id": "edge-9", "public_key": b64e(public_bytes(generate_key())), "token": "wyn_x"}, Node("edge-9"))),
    ("enrol-bad-id", {401, 403, 422}, lambda t: t.enrol(
        {"node_id": "../etc", "public_key": _pub(n := Node("../etc")), "token": "wyn_x"}, n)),
    ("enrol-surrogate-licence", {422}, lambda t: t.enrol(
        {"node_id": "edge-9", "public_key": _pub(n := Node("edge-9")), "token": "wyn_x", "licence_ref": "\ud800"}, n)),
    ("enrol-token-too-long", {422}, lambda t: t.enrol(
        {"node_id": "edge-9", "public_key": _pub(n := Node("edge-9")), "token": "w" * 1000}, n)),
    ("enrol-not-json", {422}, lambda t: t.enrol(b"\x00\x01", Node("edge-9"))),
    ("enrol-unsigned", {401}, lambda t: t.post("/v1/enrol", b'{"node_id": "edge-9"}')),
    # -- agent actions and acknowledgements ---------------------------------------------------------
    ("actions-unsigned", {401}, lambda t: t.client.get("/v1/nodes/edge-1/actions").status_code),
    ("actions-of-another-node", {403}, lambda t: t.client.get("/v1/nodes/edge-2/actions", headers=sign_request(
        t.edge1.key, "edge-1", "GET", "/v1/nodes/edge-2/actions")).status_code),
    ("ack-unknown-action", {422}, lambda t: _ack(t, b'{"acks": [{"action_id": "never-delivered"}]}')),
    ("ack-too-many", {422}, lambda t: _ack(t, json.dumps({"acks": [{"action_id": "x"}] * 1001}).encode())),
    ("ack-surrogate-detail", {422}, lambda t: _ack(t, json.dumps(
        {"acks": [{"action_id": "x", "detail": "\ud800"}]}).encode())),
    ("ack-bad-status", {422}, lambda t: _ack(t, b'{"acks": [{"action_id": "x", "status": "pwned"}]}')),
    # -- the read API and the dashboard ---------------------------------------------------------------
    ("read-no-token", {401}, lambda t: t.client.get("/v1/nodes").status_code),
    ("read-wrong-token", {401}, lambda t: t.client.get("/v1/nodes", headers={"authorization": "Bearer x" * 3})
     .status_code),
    ("read-token-as-basic", {401}, lambda t: t.client.get("/v1/actions", headers={"authorization": f"Basic {TOKEN}"})
     .status_code),
    ("read-cookie-forged", {401}, lambda t: httpx.get(t.url + "/v1/mesh", cookies={"wyneos_read": "x" * 30})
     .status_code),
    ("dashboard-no-token", {401}, lambda t: t.client.get("/").status_code),
    ("login-wrong-token", {401}, lambda t: t.client.post("/login", data={"token": "guess"}).status_code),
    ("read-odd-paging", {200}, lambda t: t.client.get("/v1/nodes?limit=-5&offset=-9", headers=AUTH).status_code),
    ("read-huge-limit", {200, 422}, lambda t: t.client.get("/v1/ticks?limit=" + "9" * 40, headers=AUTH).status_code),
    ("read-surrogate-path", {404}, lambda t: t.client.get("/v1/nodes/%ED%A0%80", headers=AUTH).status_code),
    ("method-not-allowed", {405}, lambda t: t.client.delete("/v1/nodes", headers=AUTH).status_code),
    # -- connections ------------------------------------------------------------------------------------
    ("giant-head", {"431", "closed"}, _giant_head),
    ("slow-head", {"408", "closed"}, lambda t: t.raw(b"GET /healthz HTTP/1.1\r\nX-A: ")),
    ("silent-socket", {"closed"}, lambda t: t.raw(b"")),
    ("slow-body", {"408"}, lambda t: t.raw(b"POST /v1/heartbeats HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n"
                                           b"content-type: application/json\r\n\r\n{\"a\"")),
    ("garbage-request-line", {"400", "closed"}, lambda t: t.raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")),
    ("smuggling-cl-te", {"400", "closed"}, lambda t: t.raw(
        b"POST /v1/heartbeats HTTP/1.1\r\nHost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /v1/nodes HTTP/1.1\r\nHost: x\r\n\r\n")),
    ("connection-burst", {200}, _burst),
]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redteam")
    config = write_config(tmp, interval=3600.0, stale=7200.0, offline=9000.0,
                          extra="nodes:\n  - {id: configured}\n")
    service = make_service(config, **LIMITS)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=15) as client:
        t = Target(service, url, client, str(tmp / "state.db"))
        for node in (t.edge1, t.edge2):
            body, headers = node.enrol_request(add_token(service))
            assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        deadline = time.monotonic() + 20
        while service.view.tick < 1 and time.monotonic() < deadline:  # the first tick, then an hour's quiet
            time.sleep(0.05)
        yield t


def test_the_suite_is_big_enough():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_hostile_request_is_refused_and_changes_nothing(target, case):
    _, allowed, attack = case
    before = target.snapshot()
    status = attack(target)
    assert status in allowed, f"answered {status}, expected one of {allowed}"
    after = target.snapshot()
    assert after == before, "a refused request changed the state file, /v1/nodes or the queue"
    health = target.client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
