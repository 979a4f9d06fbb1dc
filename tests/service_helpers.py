"""Helpers for the service tests: configs, services on real loopback servers, signing."""

from __future__ import annotations

import json
import re
import select
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from wyneos_core import hookimpl
from wyneos_core.config import load_config
from wyneos_core.licensing.keys import generate_key, public_bytes
from wyneos_core.model import Action, ActionType, Severity
from wyneos_core.service.core import Service, hash_token, new_token
from wyneos_core.service.identity import b64e, sign_request
from wyneos_core.service.signed_actions import seal_ack, seal_action
from wyneos_core.service.settings import ServiceSettings
from wyneos_core.tick import Orchestrator

CONFIG = """\
cluster: test
tick: {{interval: {interval}}}
heartbeat: {{interval: {interval}, stale_after: {stale}, offline_after: {offline}, max_clock_skew: 30,
            unknown_nodes: reject}}
decide: {{probation_ticks: 1, max_unhealthy_fraction: 0.9}}
mesh: {{topology: star}}
plugins: {{disable: [licence], settings: {{service: {{port: 0, replay_window: 60}}}}}}
state: {{path: state.db}}
report: {{json_path: null, stdout: none}}
{extra}
"""


def write_config(tmp: Path, *, interval: float = 0.2, stale: float = 1.0, offline: float = 2.0,
                 extra: str = "") -> Path:
    path = tmp / "config.yaml"
    path.write_text(CONFIG.format(interval=interval, stale=stale, offline=offline, extra=extra))
    return path


class Quarantine:
    """Test plugin: isolates every node whose heartbeat metadata says ``role: bad``."""

    __wyneos_name__ = "test-quarantine"

    @hookimpl
    def wyneos_enforcement(self, ctx: Any, nodes: Any) -> list[Action]:
        return [Action(ActionType.ISOLATE, n.id, "role is bad", "test-quarantine", Severity.CRITICAL)
                for n in nodes if n.metadata.get("role") == "bad"]


def make_service(config_path: Path, plugins: tuple = (), **settings: Any) -> Service:
    config = load_config(config_path)
    return Service(Orchestrator(config, plugins=plugins, load_entrypoints=False),
                   ServiceSettings.from_config(config, **settings))


def add_token(service: Service, node_id: str | None = None, uses: int = 1, ttl: float = 600) -> str:
    token = new_token()
    now = time.time()
    with service.db_lock:
        service.db.add_enrol_token(hash_token(token), node_id, uses, now + ttl, now)
    return token


class Node:
    """A node identity for tests: a key, and signed requests with it."""

    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.key = generate_key()

    def enrol_request(self, token: str | None) -> tuple[bytes, dict[str, str]]:
        body = json.dumps({"node_id": self.id, "public_key": b64e(public_bytes(self.key)),
                           **({"token": token} if token else {})}).encode()
        return body, {**sign_request(self.key, self.id, "POST", "/v1/enrol", body), "content-type": "application/json"}

    def heartbeat(self, load: float = 0.3, metadata: dict | None = None, **sign: Any) -> tuple[bytes, dict[str, str]]:
        body = json.dumps({"timestamp": time.time(), "load": load, "metadata": metadata or {}}).encode()
        return body, {**sign_request(self.key, self.id, "POST", "/v1/heartbeats", body, **sign),
                      "content-type": "application/json"}

    def batch_item(self, load: float = 0.3) -> dict[str, str]:
        body, headers = self.heartbeat(load)
        return {"node": self.id, "timestamp": headers["x-wyneos-timestamp"], "nonce": headers["x-wyneos-nonce"],
                "signature": headers["x-wyneos-signature"], "body": body.decode()}


def signed(okey: Any, action: dict, issued_at: int | None = None, ttl: float = 3600.0, **extra: Any) -> dict:
    """``action`` as the orchestrator key ``okey`` (an ``OrchestratorKey``) signs it."""
    at = int(time.time() * 1000) if issued_at is None else issued_at
    return seal_action(okey.private, {"params": {}, "origin": "test", "severity": "warning", **action, **extra},
                       at, at + int(ttl * 1000))


def write_pem(tmp: Path, okey: Any) -> Path:
    """The orchestrator key's public half as a PEM file (what ``--orchestrator-key FILE`` reads)."""
    from cryptography.hazmat.primitives import serialization

    path = tmp / "orchestrator.pub"
    path.write_bytes(okey.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def acks_body(node: "Node", *action_ids: str, status: str = "applied", service: Service | None = None) -> bytes:
    """An acknowledgement request body: each ack signed by the node's key, naming the
    issuance waiting in ``service``'s outbox (else a made-up one)."""
    issued = {a["id"]: a["issued_at"] for a in service.outbox.pending(node.id)} if service is not None else {}
    return json.dumps({"acks": [seal_ack(node.key, node.id, a, issued.get(a, 1), status, "")
                                for a in action_ids]}).encode()


def wait_for(predicate: Any, timeout: float = 20.0, step: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true; a bounded loop (a request that
    fails meanwhile counts as "not yet"). Fails the test when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not reached within {timeout:g}s")


def end_processes(procs: Any) -> None:
    """Terminate the processes this test started (by their own handles), then kill any
    that has not ended within 20 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class RawConnection:
    """One keep-alive connection to a loopback server, written and read as raw HTTP/1.1
    bytes (for what a client library would not send); every read bounded by ``timeout``."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> bool:
        """Send ``data``; False if the server closed the connection already."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def ask(self, data: bytes) -> bytes:
        """Send ``data`` and read one whole answer."""
        self.sock.sendall(data)
        return self.answer()

    def answered(self) -> bool:
        """Whether the server wrote something (or closed) without waiting for it."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def answer(self) -> bytes:
        """One whole answer (head and content-length body)."""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; got {self.buffer!r}")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        found = re.search(rb"(?im)^content-length: *(\d+)", head)
        if found is None:
            raise ConnectionError(f"an answer without content-length: {head!r}")
        length = int(found.group(1))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the body")
            rest += chunk
        self.buffer = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]

    def rest_until_closed(self) -> bytes:
        """Everything until the server closes (each read bounded by the socket timeout)."""
        data = self.buffer
        self.buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    def closed(self) -> bool:
        """Whether the server closed the connection (waiting at most ``timeout`` for it);
        False when it stays open or writes more."""
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()
