"""The dashboard in Debian's headless Chromium against a real server on 127.0.0.1:
the mesh shows every node, and the isolated one is drawn (and shown) as isolated."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest
from matplotlib.image import imread
from service_helpers import Node, Quarantine, add_token, make_service, write_config

from wyneos_core.service.identity import SignedItem
from wyneos_core.service.server import ServerThread

pytestmark = pytest.mark.slow


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run `bash scripts/test-deps.sh` as root (make test does)")
    return path


def browse(url: str, tmp_path, *extra: str) -> subprocess.CompletedProcess:
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=4000",
            *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=90)


def test_dashboard_shows_the_nodes_and_the_isolated_one(tmp_path):
    service = make_service(write_config(tmp_path, interval=0.2, stale=5, offline=10), plugins=(Quarantine(),))
    nodes = [Node(f"web-{i}") for i in range(1, 5)]
    stop = threading.Event()
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        token = add_token(service, uses=len(nodes))
        for node in nodes:
            body, headers = node.enrol_request(token)
            assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201

        def beat() -> None:
            while not stop.wait(0.1):
                for node in nodes:
                    meta = {"role": "bad" if node.id == "web-3" else "ok"}
                    body, headers = node.heartbeat(metadata=meta)
                    client.post("/v1/heartbeats", content=body, headers=headers)

        sender = threading.Thread(target=beat, daemon=True)
        sender.start()
        try:
            deadline = time.monotonic() + 20
            while not client.get("/v1/nodes/web-3").json()["isolated"]:
                assert time.monotonic() < deadline, "web-3 was never isolated"
                time.sleep(0.1)
            # live updates: while the page's first refresh is answered, a fifth node enrols;
            # the page must show it without being loaded again
            late, late_token = Node("web-5"), add_token(service)
            original, served = service.mesh_view, []

            def mesh_view() -> dict:
                data = original()
                if not served:
                    body, headers = late.enrol_request(late_token)
                    assert service.enrol(SignedItem.from_headers(headers, body))[0] == 201
                served.append(sorted(data["nodes"]))
                return data

            service.mesh_view = mesh_view
            dom = browse(url + "/", tmp_path, "--dump-dom")
            service.mesh_view = original
            shot = tmp_path / "dashboard.png"
            browse(url + "/", tmp_path, f"--screenshot={shot}", "--window-size=1280,800", "--hide-scrollbars")
        finally:
            stop.set()
            sender.join(5)
    html = dom.stdout
    assert dom.returncode == 0, dom.stderr[-2000:]
    drawn = {node: cls for cls, node in re.findall(r'<g class="node ([a-z ]+)" data-node="([^"]+)"', html)}
    assert "web-5" not in served[0] and len(served) >= 2, served  # first drawn without it, then refreshed
    assert set(drawn) == {n.id for n in nodes} | {"web-5"}, html[:3000]
    assert drawn["web-5"] == "unknown"  # enrolled, no heartbeat yet
    assert drawn["web-3"] == "online isolated"
    assert all(drawn[n] == "online" for n in ("web-1", "web-2", "web-4"))
    assert "web-3 (isolated)" in html and "Latest tick: #" in html
    assert re.search(r"<td>isolate</td><td>web-3</td>", html)
    # the screenshot: the isolated node's red and the online nodes' green are on the picture
    image = imread(shot)[:, :, :3]
    assert image.shape[0] == 800 and image.shape[1] == 1280
    pixels = (image * 255).round().astype(int)
    red = np.all(np.abs(pixels - [0xD5, 0x00, 0x00]) <= 12, axis=2).sum()
    green = np.all(np.abs(pixels - [0x2E, 0x7D, 0x32]) <= 12, axis=2).sum()
    assert red > 300, f"isolated node not visible ({red} red pixels)"
    assert green > 3 * 300, f"online nodes not visible ({green} green pixels)"
