"""Trust where an operator looks, on a real server on 127.0.0.1: /v1/nodes, /metrics,
refused replays counted against the node, the dashboard's tier colours (Chromium)."""

from __future__ import annotations

import shutil
import subprocess
import threading

import httpx
import pytest
from service_helpers import Node, add_token, make_service, wait_for, write_config

from wyneos_core.builtin.trust import explain
from wyneos_core.service.server import ServerThread


def test_an_enrolled_node_shows_its_trust_everywhere_and_replays_count_against_it(tmp_path):
    service = make_service(write_config(tmp_path, stale=5, offline=10))
    node = Node("edge-1")
    stop = threading.Event()
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        body, headers = node.enrol_request(add_token(service))
        assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201

        def beat() -> None:
            while not stop.wait(0.1):
                b, h = node.heartbeat()
                client.post("/v1/heartbeats", content=b, headers=h)

        sender = threading.Thread(target=beat, daemon=True)
        sender.start()
        try:
            got = wait_for(lambda: (n := client.get("/v1/nodes/edge-1").json()).get("trust_tier") and n)
            # enrolled, not declared in the config: it starts in probation, in admission
            assert got["trust_tier"] == "probation" and 0 <= got["trust"] <= 1
            listed = client.get("/v1/nodes").json()["nodes"]
            assert [(n["id"], n["trust_tier"]) for n in listed] == [("edge-1", "probation")]
            metrics = client.get("/metrics").text
            assert 'wyneos_nodes_by_trust_tier{tier="probation"} 1.0' in metrics
            assert 'wyneos_nodes_by_trust_tier{tier="trusted"} 0.0' in metrics
            # a replayed heartbeat is refused (409) and counted against the node
            b, h = node.heartbeat()
            assert client.post("/v1/heartbeats", content=b, headers=h).status_code == 202
            assert client.post("/v1/heartbeats", content=b, headers=h).status_code == 409
            refusals = lambda: {s["signal"]: s for s in explain(service.orchestrator, "edge-1")["signals"]}["refusals"]
            wait_for(lambda: refusals()["negative"] > 0)
            # after its probation it is admitted and climbs to trusted
            wait_for(lambda: client.get("/v1/nodes/edge-1").json()["trust_tier"] == "trusted", timeout=30)
            tick = client.get("/v1/ticks/latest").json()
            assert tick["trust"]["tiers"]["trusted"] == 1
            if shutil.which("chromium"):
                dom = subprocess.run(
                    ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                     "--virtual-time-budget=4000", "--dump-dom", url + "/"],
                    capture_output=True, text=True, timeout=90).stdout
                assert 'data-node="edge-1"' in dom and 'data-tier="trusted"' in dom
                assert 'stroke="#00897b"' in dom  # the node is drawn with the trusted ring colour
        finally:
            stop.set()
            sender.join(timeout=5)
