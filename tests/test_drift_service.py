"""Drift on a real server: /metrics, /v1/nodes, explain and the dashboard (headless Chromium)."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
from service_helpers import Node, add_token, make_service, wait_for, write_config
from test_service_dashboard import browse

from wyneos_core.service.server import ServerThread

pytestmark = pytest.mark.slow

DECLARED = """\
drift:
  declared:
    - selector: {labels: {role: web}}
      version: "2.4.0"
      config_digest: "sha256:aa"
"""


def test_drift_is_shown_in_metrics_nodes_explain_and_the_dashboard(tmp_path) -> None:
    service = make_service(write_config(tmp_path, interval=0.2, stale=5, offline=10, extra=DECLARED))
    nodes = [Node(f"web-{i}") for i in range(1, 4)]
    stop = threading.Event()
    reported = {n.id: {"labels": {"role": "web"}, "version": "2.4.0", "config_digest": "sha256:aa"} for n in nodes}
    reported["web-2"] = {**reported["web-2"], "config_digest": "sha256:hand-edited"}
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        token = add_token(service, uses=len(nodes))
        for node in nodes:
            body, headers = node.enrol_request(token)
            assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201

        def beat() -> None:
            while not stop.wait(0.1):
                for node in nodes:
                    body, headers = node.heartbeat(metadata=reported[node.id])
                    client.post("/v1/heartbeats", content=body, headers=headers)

        sender = threading.Thread(target=beat, daemon=True)
        sender.start()
        try:
            drift = wait_for(lambda: (d := client.get("/v1/nodes/web-2").json().get("drift")) and
                             d["state"] == "unexplained" and d)
            assert drift["fields"] == ["config_digest"] and drift["declared_by"] == "drift.declared[0]"
            assert drift["since"] <= time.time()
            # every node heard at least once: one drifted, two in sync
            metrics = wait_for(lambda: (m := client.get("/metrics").text) and re.search(
                r'^wyneos_nodes_by_drift_state\{state="in_sync"\} 2\.0$', m, re.M) and m)
            assert re.search(r'^wyneos_nodes_by_drift_state\{state="unexplained"\} 1\.0$', metrics, re.M)
            assert re.search(r'^wyneos_drift_transitions_total\{state="unexplained"\} 1\.0$', metrics, re.M)
            assert client.get("/v1/nodes/web-1").json()["drift"]["state"] == "in_sync"
            assert client.get("/v1/ticks/latest").json()["drift"]["counts"]["unexplained"] == 1
            explained = client.get("/v1/nodes/web-2/explain").json()
            assert explained["drift"]["state"] == "unexplained"
            dom = browse(url + "/", tmp_path, "--dump-dom")
        finally:
            stop.set()
            sender.join(5)
    html = dom.stdout
    assert dom.returncode == 0, dom.stderr[-2000:]
    counts = re.search(r'<div class="counts" id="drift">(.*?)</div>', html, re.S).group(1)
    assert '<span class="bad">unexplained: 1</span>' in counts and "<span>in sync: 2</span>" in counts
    body = re.search(r'<tbody id="drifted">(.*?)</tbody>', html, re.S).group(1)
    rows = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
            for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S)]
    assert len(rows) == 1 and rows[0][:3] == ["web-2", "unexplained", "config_digest"]
    assert rows[0][4] == "drift.declared[0]"
