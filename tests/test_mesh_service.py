"""Service mode: `wyneos serve` and five witnessing agents on a loopback ring.

Real processes and real HTTP on 127.0.0.1: the orchestrator hands each agent its
neighbours (signed with the orchestrator key), each agent serves a peer endpoint and
probes its neighbours, and reports what it sees with its heartbeats.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import pytest
from service_helpers import end_processes

from wyneos_core.licensing.envelope import seal
from wyneos_core.licensing.keys import fingerprint, generate_key, public_bytes, write_private_key, write_public_key
from wyneos_core.mesh import Mesh
from wyneos_core.model import ORIGIN
from wyneos_core.registry import Registry
from wyneos_core.service.orchestrator_key import OrchestratorKey
from wyneos_core.service.peer import NEIGHBOURS_FORMAT, NeighbourBook, PeerNode

WYNEOS = [sys.executable, "-m", "wyneos_core.cli"]
NODES = ["n1", "n2", "n3", "n4", "n5"]

CONFIG = """\
cluster: mesh-test
tick: {{interval: 0.3}}
heartbeat: {{interval: 0.3, stale_after: 1.5, offline_after: 3.0, max_clock_skew: 30, unknown_nodes: reject}}
decide: {{probation_ticks: 1, max_unhealthy_fraction: 0.9, max_correlated_fraction: 1.0}}
consensus: {{window_ticks: 8}}
mesh: {{topology: ring, origin_links: 5}}
plugins: {{disable: [licence], settings: {{service: {{port: 0, replay_window: 60}}}}}}
state: {{path: state.db}}
report: {{json_path: null, stdout: none}}
nodes:
{nodes}
"""


def wait_for(predicate, timeout: float = 30.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except httpx.HTTPError:
            last = None
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"not within {timeout}s (last: {last!r})")


@pytest.fixture
def ring(tmp_path):
    # node keys first, so the config can pin their fingerprints (no tokens needed)
    fps = {}
    for n in NODES:
        key = generate_key()
        (tmp_path / n).mkdir()
        write_private_key(tmp_path / n / "node.key", key)
        fps[n] = fingerprint(public_bytes(key))
    nodes = "\n".join(f"  - {{id: {n}, fingerprint: '{fps[n]}'}}" for n in NODES)
    (tmp_path / "config.yaml").write_text(CONFIG.format(nodes=nodes))
    okey = OrchestratorKey.for_state(tmp_path / "state.db")  # what serve will load
    write_public_key(tmp_path / "orchestrator.pub", okey.private)
    procs: dict[str, subprocess.Popen] = {}
    serve = subprocess.Popen([*WYNEOS, "serve", "-c", "config.yaml", "--port", "0"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs["serve"] = serve
    try:
        line = serve.stdout.readline()
        assert "listening on" in line, line
        url = line.split("listening on ")[1].split()[0]
        for n in NODES:
            procs[n] = subprocess.Popen(
                [*WYNEOS, "agent", "--server", url, "--node", n, "--state-dir", str(tmp_path / n),
                 "--interval", "0.3", "--peer-port", "0", "--orchestrator-key", str(tmp_path / "orchestrator.pub"),
                 "--duration", "120"],
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with httpx.Client(base_url=url, timeout=5) as client:
            yield tmp_path, client, procs
    finally:
        end_processes(procs.values())


def node(client, node_id):
    return client.get(f"/v1/nodes/{node_id}").json()


def verdict(client, target):
    report = client.get("/v1/ticks/latest").json()
    report = report.get("report", report)
    return next((a for a in report.get("consensus", {}).get("actions", []) if a["target"] == target), None)


def observations_flowing(client):
    report = client.get("/v1/ticks/latest").json()
    report = report.get("report", report)
    return report.get("consensus", {}).get("observations", 0) >= 8


def test_ring_of_agents_witnesses_a_cut_link_and_confirms_a_killed_agent(ring):
    tmp, client, procs = ring
    wait_for(lambda: all(node(client, n)["status"] == "online" for n in NODES))
    # every agent probes its two ring neighbours and reports them with its heartbeats
    wait_for(lambda: observations_flowing(client))

    # 1. n3 loses its link to the orchestrator (test switch); n2 and n4 still reach it
    (tmp / "n3" / "cut-orchestrator").write_text("")
    wait_for(lambda: node(client, "n3")["status"] == "offline")
    held = wait_for(lambda: verdict(client, "n3"))
    assert held["approved"] is False and held["basis"] == "refuted"
    assert held["refuted_by"] == ["n2", "n4"]
    time.sleep(2.0)  # many ticks later: still held, never isolated
    assert node(client, "n3")["isolated"] is False
    assert verdict(client, "n3")["basis"] == "refuted"

    # 2. n5 is killed outright: its neighbours n1 and n4 can no longer reach it
    wait_for(lambda: not node(client, "n5")["isolated"])  # (a slow start may have had it isolated for a while)
    killed_at = client.get("/v1/ticks/latest").json()["tick"]
    procs["n5"].send_signal(signal.SIGKILL)
    assert procs["n5"].wait(10) == -signal.SIGKILL
    wait_for(lambda: node(client, "n5")["isolated"], timeout=30)
    def approval():  # decisions the API reports are committed ones: wait for the commit
        committed = client.get("/v1/actions").json()
        isolate = [a["id"] for a in committed["in_force"] if a["type"] == "isolate" and a["target"] == "n5"]
        return [e for e in committed["events"] if e["action_id"] in isolate and e["state"] == "approved"
                and e["tick"] > killed_at]

    [approved] = wait_for(approval)
    assert approved["detail"] == "confirmed: 2 witness(es) confirm it unreachable: n1, n4", approved
    # the cut-off node is still not isolated
    assert node(client, "n3")["isolated"] is False


REGISTRY_SETTINGS = {"stale_after": 18, "offline_after": 48, "max_clock_skew": 60, "unknown_nodes": "reject",
                     "max_metadata_bytes": 8192, "max_load": 64, "max_nodes": 100}


def test_neighbour_list_is_signed_and_a_forged_one_refused(tmp_path):
    okey = OrchestratorKey.for_state(tmp_path / "state.db")
    book = NeighbourBook(okey.seal)
    me = generate_key()
    peer = PeerNode("n1", me, okey.keyring(), interval=60)
    try:
        other = generate_key()
        entries = [{"id": "n2", "address": "127.0.0.1:9", "fingerprint": fingerprint(public_bytes(other))}]
        registry, mesh = Registry(REGISTRY_SETTINGS), Mesh()
        registry.register("n1", now=0.0)
        registry.register("n9", now=0.0)
        registry.register("n2", now=0.0, metadata={"peer_address": "127.0.0.1:9"}, fingerprint=entries[0]["fingerprint"])
        mesh.add_edges([(ORIGIN, "n1"), ("n1", "n2"), ("n9", "n2")])
        book.wyneos_tick_report(SimpleNamespace(registry=registry, mesh=mesh, tick=7))
        good = book.signed_for("n1")
        assert peer.update(good) and peer.neighbours == entries
        # the same list signed by another key, or altered after signing, is refused
        forged = seal(NEIGHBOURS_FORMAT, {"node": "n1", "tick": 8, "issued_at": 0,
                                          "neighbours": [{**entries[0], "address": "127.0.0.1:1"}]}, generate_key())
        assert not peer.update(forged)
        altered = json.loads(json.dumps(good))
        altered["payload"]["neighbours"][0]["address"] = "127.0.0.1:1"
        assert not peer.update(altered)
        assert peer.neighbours == entries and peer.refused_lists == 2
        # a list for another node is refused too
        assert book.neighbours_of("n9") == tuple(entries)
        assert not peer.update(book.signed_for("n9"))
        # without a pinned key nothing is trusted
        blind = PeerNode("n1", me, None, interval=60)
        try:
            assert not blind.update(good) and blind.neighbours == []
        finally:
            blind.close()
    finally:
        peer.close()


def test_probe_checks_the_neighbours_key_and_signature(tmp_path):
    okey = OrchestratorKey.for_state(tmp_path / "state.db")
    a_key, b_key = generate_key(), generate_key()
    a = PeerNode("a", a_key, okey.keyring(), interval=60).start()
    b = PeerNode("b", b_key, okey.keyring(), interval=60).start()
    try:
        b.seq = 41
        honest = {"id": "b", "address": b.address, "fingerprint": fingerprint(public_bytes(b_key))}
        obs = a.probe(honest)
        assert obs["reachable"] is True and obs["last_seq"] == 41 and obs["rtt_ms"] >= 0
        # someone else answering at b's address (wrong fingerprint) is not b
        wrong = {**honest, "fingerprint": fingerprint(public_bytes(generate_key()))}
        assert a.probe(wrong)["reachable"] is False
        assert a.probe({**honest, "id": "c"})["reachable"] is False
        # nobody listening
        b.close()
        assert a.probe(honest) == {"subject": "b", "reachable": False, "rtt_ms": None, "last_seq": None}
    finally:
        a.close()


def test_service_refuses_bad_observations_naming_the_field(tmp_path):
    from wyneos_core.service.outcomes import Unprocessable
    from wyneos_core.service.signed_intake import _heartbeat
    from wyneos_core.service.identity import SignedItem, sign_request

    key = generate_key()
    for obs, field in [("x", "observations"), ([{"subject": "n2"}], "observations[0]"),
                       ([{"subject": "n2", "reachable": True, "extra": 1}], "observations[0]"),
                       ([{"subject": "n2", "reachable": True}] * 65, "observations")]:
        body = json.dumps({"timestamp": time.time(), "observations": obs}).encode()
        item = SignedItem.from_headers(sign_request(key, "n1", "POST", "/v1/heartbeats", body), body)
        with pytest.raises(Unprocessable) as info:
            _heartbeat(item, time.time(), None)
        assert info.value.field == field
    body = json.dumps({"timestamp": time.time(), "observations": [
        {"subject": "n2", "reachable": False, "rtt_ms": None, "last_seq": 3}]}).encode()
    item = SignedItem.from_headers(sign_request(key, "n1", "POST", "/v1/heartbeats", body), body)
    hb = _heartbeat(item, time.time(), None)
    assert [(o.observer, o.subject, o.reachable, o.signed) for o in hb.observations] == [("n1", "n2", False, True)]


def test_neighbour_lists_are_made_when_a_node_asks_from_the_last_ticks_mesh(tmp_path, make_orchestrator):
    from conftest import cluster_yaml

    orch = make_orchestrator(cluster_yaml(5, topology="ring"))
    okey = OrchestratorKey.for_state(tmp_path / "state.db")
    book = NeighbourBook(okey.seal, max_sealed=2)
    orch.pm.register(book, NeighbourBook.__wyneos_name__)
    assert book.signed_for("n01") is None  # before the first tick: nothing to hand out
    for i in range(1, 6):
        node = orch.registry[f"n0{i}"]
        node.fingerprint = f"fp-{i}"
        node.metadata = {"peer_address": f"127.0.0.1:90{i:02d}"}
    orch.tick()
    ring = {v for v in orch.mesh.neighbours("n01") if v.startswith("n")}
    assert len(ring) == 2
    first = book.signed_for("n01")
    listed = first["payload"]["neighbours"]
    assert [e["id"] for e in listed] == sorted(ring)
    assert all(e["fingerprint"] == f"fp-{e['id'][-1]}" and e["address"].endswith(e["id"][-1]) for e in listed)
    assert book.signed_for("n01") is first  # unchanged: not sealed again
    # a neighbour without a peer address, or isolated, drops out at the next ask
    gone = min(ring)
    orch.registry[gone].metadata = {}
    orch.tick()
    again = book.signed_for("n01")
    assert again is not first and [e["id"] for e in again["payload"]["neighbours"]] == sorted(ring - {gone})
    assert again["payload"]["tick"] == orch.tick_number
    assert book.signed_for("nobody") is None
    # the sealed lists are bounded: the least recently asked is forgotten (sealed again when it asks)
    book.signed_for("n02")
    book.signed_for("n03")
    assert len(book) == 2 and book.signed_for("n01") is not again
