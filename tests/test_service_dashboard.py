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


def test_dashboard_shows_why_licences_rules_and_actions(tmp_path):
    """Each node's licence state and reason, the cause and message of every action in
    force, failing and firing rules with counts, and "none" in empty tables: in the DOM
    Chromium built, and on its screenshot."""
    from why_helpers import NODES, licensed_service

    service = licensed_service(tmp_path)
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        deadline = time.monotonic() + 20
        while client.get("/healthz").json()["tick"] < 3:
            assert time.monotonic() < deadline, "the server never ran 3 ticks"
            time.sleep(0.05)
        dom = browse(url + "/", tmp_path, "--dump-dom")
        shot = tmp_path / "why.png"
        shown = browse(url + "/", tmp_path, f"--screenshot={shot}", "--window-size=1400,1500")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert shown.returncode == 0, shown.stderr[-2000:]
    html = dom.stdout

    def rows(table: str) -> list[list[str]]:
        body = re.search(rf'<tbody id="{table}">(.*?)</tbody>', html, re.S).group(1)
        return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
                for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S)]

    nodes = {r[0]: r for r in rows("nodes")}
    assert set(nodes) == set(NODES)
    assert nodes["none-1"][2] == "INVALID no_licence" and nodes["exp-1"][2] == "INVALID expired"
    assert nodes["grace-1"][2] == "in grace expired" and nodes["ok-1"][2] == "valid"
    assert nodes["none-1"][3] == "isolate: licence:no_licence"
    assert nodes["old-1"][3] == "quarantine: rule:version-floor"
    assert nodes["bad-1"][3] == "isolate: plugin:test-quarantine" and nodes["ok-1"][3] == "-"
    assert re.search(r'<td class="bad" title="the node names no licence \(sources: file\)">INVALID no_licence</td>',
                     html)

    in_force = {(r[0], r[1]): r for r in rows("inforce")}
    assert len(in_force) == 6
    assert in_force[("isolate", "none-1")][2:4] == ["licence:no_licence",
                                                    "no licence: the node names no licence (sources: file)"]
    assert in_force[("isolate", "exp-1")][2] == "licence:expired"
    assert in_force[("isolate", "exp-1")][3].startswith("licence expired: licence lic-acme-03 expired ")
    assert in_force[("degrade", "grace-1")][2] == "licence:expired"
    assert in_force[("quarantine", "old-1")][2] == "rule:version-floor"
    # the tooltip tells the rest: the code's meaning and the rule that decided
    assert ('title="no configured source has a licence for the node; decided by rule '
            'licence-enforcement/isolate-unlicensed">licence:no_licence</td>') in html
    assert in_force[("isolate", "bad-1")][2:4] == ["plugin:test-quarantine", "role is bad"]
    assert in_force[("quarantine", "old-1")][4] == "1"  # since tick 1

    rules = {r[0]: r for r in rows("rules")}
    assert set(rules) == {"version-floor", "version-reported", "required-metadata"}  # the failing ones only
    assert rules["version-floor"][1:4] == ["1", "1", "7"] and rules["version-floor"][5] == "old-1"
    assert rules["version-reported"][1:4] == ["1", "1", "7"] and rules["version-reported"][5] == "bare-1"
    assert rules["required-metadata"][1:4] == ["1", "1", "7"]
    assert rules["required-metadata"][4] == "metadata incomplete: region=missing, version=missing"

    licences = {(r[0], r[1]): r for r in rows("licences")}
    assert licences[("invalid", "no_licence")][2:] == ["1", "no configured source has a licence for the node",
                                                       "none-1"]
    assert licences[("in grace", "expired")][4] == "grace-1"
    assert licences[("valid", "ok")][2] == "5"
    # no action was decided in the last tick: the table says so
    assert rows("actions") == [["none"]]
    assert '<td colspan="4" class="none">none</td>' in html

    # the screenshot: a real picture of the page at the asked size, not blank, with the
    # red of the isolated nodes on the mesh and the text of the tables
    image = imread(shot)[:, :, :3]
    assert image.shape[:2] == (1500, 1400)
    pixels = (image * 255).round().astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "a blank or flat screenshot"
    red = np.all(np.abs(pixels - [0xD5, 0x00, 0x00]) <= 12, axis=2).sum()
    assert red > 3 * 300, f"the three isolated nodes are not visible ({red} red pixels)"
    dark = (pixels.sum(axis=2) < 200)[:, 700:].sum()  # table text on the right half
    assert dark > 2000, f"no table text on the right half ({dark} dark pixels)"
