"""The dashboard at 10,000 nodes, in Debian's headless Chromium against a real server:
server-side pages, filters from the address bar, aggregates by zone and tier, history
charts, and the mesh around one node instead of the whole ring; with a screenshot."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from matplotlib.image import imread
from service_helpers import Quarantine, make_service
from test_service_dashboard import browse

from wyneos_core.model import Heartbeat
from wyneos_core.service.server import ServerThread

pytestmark = pytest.mark.slow

N = 10_000
ZONES = ("eu", "us", "ap", "sa")


def _node(i: int) -> str:
    return f"n{i:05d}"


def _meta(i: int) -> dict:
    return {"zone": ZONES[i % 4], "role": "bad" if i % 97 == 0 else "ok"}


def _config(tmp: Path) -> Path:
    nodes = "\n".join(f"  - {{id: {_node(i)}, metadata: {{zone: {ZONES[i % 4]}}}}}" for i in range(N))
    path = tmp / "config.yaml"
    path.write_text(f"""\
cluster: big
tick: {{interval: 1.0}}
heartbeat: {{interval: 5, stale_after: 60, offline_after: 120, max_clock_skew: 30}}
decide: {{probation_ticks: 1, max_unhealthy_fraction: 0.9}}
mesh: {{topology: ring, origin_links: 4, seed: 1}}
plugins: {{disable: [licence], settings: {{service: {{port: 0, replay_window: 60}}}}}}
state: {{path: state.db}}
report: {{json_path: null, stdout: none}}
nodes:
{nodes}
""")
    return path


def _rows(html: str) -> list[list[str]]:
    body = re.search(r'<tbody id="nodes">(.*?)</tbody>', html, re.S).group(1)
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
            for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def test_a_dashboard_for_ten_thousand_nodes(tmp_path: Path) -> None:
    service = make_service(_config(tmp_path), plugins=(Quarantine(),))
    silent = {i for i in range(N) if i % 50 == 7}  # never heard from
    stop = threading.Event()

    def beat() -> None:  # heartbeats into the server's intake queue, as its HTTP intake puts them
        while True:
            now = time.time()
            service.orchestrator.intake.put_many(
                Heartbeat(_node(i), now, 0.2 + (i % 10) / 20, _meta(i)) for i in range(N) if i not in silent)
            if stop.wait(5):
                return

    sender = threading.Thread(target=beat, daemon=True)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=60) as client:
        sender.start()
        try:
            deadline = time.monotonic() + 300
            while True:  # (the decide step spreads isolations over ticks: take what the server decided)
                history = client.get("/v1/fleet/history").json()["ticks"]
                page = client.get("/v1/fleet/nodes", params={"problem": "isolated", "selector": "zone=eu",
                                                             "sort": "id", "limit": 1000}).json()
                if len(history) >= 3 and page["count"] >= 2:
                    break
                assert time.monotonic() < deadline, (len(history), page["count"])
                time.sleep(0.5)
            eu_isolated = [n["id"] for n in page["nodes"]]
            chosen = eu_isolated[1]
            front = browse(url + "/", tmp_path, "--dump-dom")
            filtered = browse(url + f"/?problem=isolated&selector=zone%3Deu&sort=id&node={chosen}", tmp_path,
                              "--dump-dom")
            front_shot = tmp_path / "front.png"
            browse(url + "/", tmp_path, f"--screenshot={front_shot}", "--window-size=1400,1300")
            shot = tmp_path / "fleet.png"
            browse(url + f"/?problem=isolated&selector=zone%3Deu&sort=id&node={chosen}", tmp_path,
                   f"--screenshot={shot}", "--window-size=1400,1300")
            # `wyneos get` reads every page: all 10,000, not the server's first 1,000
            listed = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "get", "nodes", "--sort", "id",
                                     "-o", "json", "--server", url, "--timeout", "60"],
                                    capture_output=True, text=True, timeout=600)
            capped = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "get", "nodes", "--sort", "id",
                                     "--limit", "1500", "-o", "json", "--server", url, "--timeout", "60"],
                                    capture_output=True, text=True, timeout=600)
        finally:
            stop.set()
            sender.join(10)
    assert front.returncode == 0 and filtered.returncode == 0, front.stderr[-2000:]
    assert listed.returncode == 0 and capped.returncode == 0, (listed.stderr, capped.stderr)
    every = [n["id"] for n in json.loads(listed.stdout)["items"]]
    assert every == [_node(i) for i in range(N)]
    assert [n["id"] for n in json.loads(capped.stdout)["items"]] == every[:1500]

    html = front.stdout
    assert "10000 nodes" in re.search(r'<div id="status">(.*?)</div>', html).group(1)
    rows = _rows(html)
    assert len(rows) == 50  # one page, from the server
    assert " 1-50 of 10000 " in html
    assert rows[0][1].startswith("online (isolated)") or rows[0][1].startswith("unknown")  # worst first
    zones = {r[0]: r for r in re.findall(r"<tr><td>(eu|us|ap|sa)</td><td>(\d+)</td>", html)}
    assert {z: int(n) for z, n in zones.values()} == {"eu": 2500, "us": 2500, "ap": 2500, "sa": 2500}
    for chart in ("chart-status", "chart-actions", "chart-rules"):
        svg = re.search(rf'<svg id="{chart}"[^>]*>(.*?)</svg>', html, re.S).group(1)
        points = re.findall(r'<polyline[^>]*points="([^"]+)"', svg)
        assert points and all(len(p.split()) >= 3 for p in points), chart  # a line over several ticks
    centre = re.search(r'<svg id="mesh"[^>]*data-centre="([^"]+)"', html).group(1)
    drawn = re.findall(r'<g class="node [a-z ]+" data-node="([^"]+)"', html)
    assert centre == rows[0][0] and centre in drawn and 3 <= len(drawn) <= 151  # its neighbourhood, not 10,000

    html = filtered.stdout
    rows = _rows(html)
    ids = [r[0] for r in rows]  # filtered and sorted on the server (isolations go on meanwhile: a superset)
    assert ids == sorted(ids) and set(eu_isolated) <= set(ids) and len(ids) <= 50
    assert all(int(i[1:]) % 4 == 0 and int(i[1:]) % 97 == 0 for i in ids)  # zone eu, role bad
    assert all("(isolated)" in r[1] and "isolated" in r[7] for r in rows)
    shown = int(re.search(r" 1-\d+ of (\d+) ", html).group(1))
    assert shown >= len(eu_isolated) and shown <= len(range(0, N, 4 * 97))
    assert re.search(rf'<svg id="mesh"[^>]*data-centre="{chosen}"', html)
    assert re.search(rf'<g class="node online isolated" data-node="{chosen}"', html)
    assert f"the mesh within 2 hops of {chosen}" in html

    image = imread(shot)[:, :, :3]
    assert image.shape[:2] == (1300, 1400)
    pixels = (image * 255).round().astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "a blank or flat screenshot"
    red = np.all(np.abs(pixels - [0xD5, 0x00, 0x00]) <= 12, axis=2).sum()
    green = np.all(np.abs(pixels - [0x2E, 0x7D, 0x32]) <= 12, axis=2).sum()
    assert red > 400, f"the chosen isolated node is not visible ({red} red pixels)"
    # the front page: the worst node's neighbourhood drawn on the left (online neighbours in green)
    front_pixels = (imread(front_shot)[:, :, :3] * 255).round().astype(int)
    mesh_area = front_pixels[100:750, :690]
    green = np.all(np.abs(mesh_area - [0x2E, 0x7D, 0x32]) <= 12, axis=2).sum()
    assert green > 400, f"the neighbourhood's online nodes are not visible ({green} green pixels)"
