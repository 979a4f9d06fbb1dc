"""``wyneos relay`` between agents and a real orchestrator on 127.0.0.1: heartbeats gathered
and forwarded in batches, handshakes passed through, and a relay that alters an item is
refused for that item only."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import uvicorn
from service_helpers import Node, add_token, make_service, wait_for, write_config

from tests.test_sessions import enrolled, served  # noqa: F401 - served is a fixture
from wyneos_core.service.relay import Relay, relay_config
from wyneos_core.service.server import ServerThread, bind
from wyneos_core.service.session_client import SessionClient


class RelayThread:
    """A relay served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, relay: Relay, **limits: Any) -> None:
        self.relay = relay
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(relay_config(relay, **limits))  # serve's connection guard
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the relay did not start"
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()



def test_wyneos_relay_forwards_session_and_signed_heartbeats_in_batches(served):
    service, client, url = served
    nodes = [enrolled(service, client, f"r-{i}") for i in range(6)]
    relay = subprocess.Popen([sys.executable, "-m", "wyneos_core.cli", "relay", "--upstream", url, "--port", "0",
                              "--flush", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = relay.stdout.readline()
        assert "listening on" in line, line + relay.stdout.read()
        relay_url = line.split("listening on ")[1].split(",")[0]
        agents = [SessionClient(relay_url, n.id, n.key) for n in nodes[:5]]

        def beat(i: int) -> int:  # the handshake is passed through; the heartbeat is relayed
            status, answer = agents[i].heartbeat(json.dumps({"load": 0.1 * (i + 1)}).encode())
            assert answer.get("relayed") is True and answer.get("ack")  # the ack's MAC was checked by the client
            return status

        with ThreadPoolExecutor(5) as pool:
            assert list(pool.map(beat, range(5))) == [202] * 5
        body, headers = nodes[5].heartbeat(load=0.6)
        r = httpx.post(relay_url + "/v1/heartbeats", content=body, headers=headers, timeout=10)
        assert r.status_code == 202 and r.json()["relayed"] is True
        for i in range(6):
            wait_for(lambda i=i: client.get(f"/v1/nodes/r-{i}").json()["load"] == round(0.1 * (i + 1), 1))
        health = httpx.get(relay_url + "/healthz", timeout=10).json()
        assert health["forwarded"] == 6 and health["batches"] < 6  # gathered, not one request per heartbeat
    finally:
        relay.terminate()
        relay.wait(30)
    assert "stopped after forwarding 6 heartbeats" in relay.stdout.read()


def test_a_relay_that_alters_an_item_is_refused_for_that_item_only(served):
    service, client, url = served
    nodes = [enrolled(service, client, f"h-{i}") for i in range(4)]

    def tamper(items: list[bytes]) -> list[bytes]:
        out = []
        for raw in items:
            item = json.loads(raw)
            if json.loads(item["body"]).get("load") == 0.2:  # the victim: claim it is overloaded
                item["body"] = json.dumps({"load": 9.9})
            out.append(json.dumps(item).encode())
        return out

    with RelayThread(Relay(url, flush=0.3, alter=tamper)) as relay_url:
        agents = [SessionClient(relay_url, n.id, n.key) for n in nodes[:3]]
        for a in agents:
            a.open()  # the handshakes pass through the relay

        def beat(i: int):
            return agents[i].heartbeat(json.dumps({"load": 0.1 * (i + 1)}).encode())

        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(beat, range(3)))
        assert [s for s, _ in results] == [202, 401, 202]
        assert results[1][1]["code"] == "bad_mac"
        # a signed heartbeat altered the same way: refused alone too
        body, headers = nodes[3].heartbeat(load=0.2)
        r = httpx.post(relay_url + "/v1/heartbeats", content=body, headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["code"] == "bad_signature"
    wait_for(lambda: client.get("/v1/nodes/h-2").json()["load"] == 0.3)
    assert client.get("/v1/nodes/h-0").json()["load"] == 0.1
    assert client.get("/v1/nodes/h-1").json()["load"] is None and client.get("/v1/nodes/h-3").json()["load"] is None


def test_a_relay_cannot_pass_off_its_own_ack(served):
    service, client, url = served
    node = enrolled(service, client, "k-1")

    class Lying(Relay):
        def forward(self, items):  # answers 202 without asking the orchestrator
            return [(202, {"accepted": 1, "relayed": True, "ack": "0" * 32}) for _ in items]

    with RelayThread(Lying(url, flush=0.05)) as relay_url:
        agent = SessionClient(relay_url, node.id, node.key)
        from wyneos_core.service.session_client import SessionError

        with pytest.raises(SessionError, match="no valid MAC"):
            agent.heartbeat(b'{"load": 0.5}')
