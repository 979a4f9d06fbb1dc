"""Replicas under the faults of the fault-injection run (issue 18, items 3-4; items 1-2,
a dead node across failovers and its reinstate through a follower, are held by
tests/test_ha_schedule.py): read endpoints answer from the last committed view during
a quorum loss, ``/healthz`` reports only committed ticks, sessions survive a failover,
followers tell the committed truth.

Real 3-member etcd cluster, real replicas, real agents; every wait bounded, no time
asserted (a bound that only a request waiting on etcd could exceed is not a speed).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ha_helpers import TICK, AgentThread, Fleet, wait_for

pytestmark = pytest.mark.slow


def _rows(fleet: Fleet) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    store = fleet.store()
    try:
        return {n["id"]: n for n in store.node_rows()}, store.actions()
    finally:
        store.close()


def _get(url: str, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - loopback
            return answer.status, json.loads(answer.read() or b"null") if "metrics" not in url else answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()[:300]


READS = ("/v1/actions", "/v1/ticks", "/v1/ticks/latest", "/v1/nodes", "/healthz", "/metrics")


def test_reads_answer_from_the_last_committed_view_during_a_quorum_loss(tmp_path: Path) -> None:
    # etcd requests may wait 20 s per member here: an endpoint that waits on etcd cannot
    # answer within the 10 s below, one that answers from the committed view does
    with Fleet(tmp_path, replicas=2, agents=1, etcd_timeout=20.0) as fleet:
        wait_for("a gate decision in force", lambda: any(
            (_get(r.url + "/v1/actions", 5)[1] or {}).get("in_force") for r in fleet.replicas), 30)
        before = {r.name: _get(r.url + "/v1/actions", 5)[1] for r in fleet.replicas}
        for kind in ("kill", "pause"):
            if kind == "kill":
                fleet.etcd.kill(1)
                fleet.etcd.kill(2)
            else:
                for i in range(3):
                    fleet.etcd.pause(i)
            try:
                for _ in range(3):
                    for r in fleet.replicas:
                        for path in READS:
                            status, body = _get(r.url + path, 10.0)
                            assert status == 200, f"{kind}: {r.name} {path} answered {status}: {body!r}"
                        answer = _get(r.url + "/v1/actions", 10.0)[1]
                        assert {a["id"] for a in answer["in_force"]} >= {a["id"] for a in before[r.name]["in_force"]}
                    time.sleep(TICK * 4)
            finally:
                if kind == "kill":
                    fleet.etcd.restart(1)
                    fleet.etcd.restart(2)
                else:
                    for i in range(3):
                        fleet.etcd.resume(i)
            fleet.wait_leader(timeout=60)
        # the view moves on once etcd answers again
        top = max(_get(r.url + "/v1/actions", 5)[1]["committed_tick"] for r in fleet.replicas)
        wait_for("a newer committed view", lambda: all(
            (_get(r.url + "/v1/actions", 5)[1] or {}).get("committed_tick", 0) > top
            and _get(r.url + "/v1/actions", 5)[1].get("etcd_error") is None for r in fleet.replicas), 60)


def test_healthz_reports_only_committed_ticks(tmp_path: Path) -> None:
    """A leader whose tick write is refused (its leader key taken away under it, as a
    deposed leader's) must not show that tick: every tick /healthz reports was
    committed by the time it answered (etcd's tick number only grows)."""
    from wyneos_core.ha.etcd import EtcdClient

    with Fleet(tmp_path, replicas=1, agents=1) as fleet:
        replica = fleet.replicas[0]
        wait_for("ticks", lambda: ((replica.health() or {}).get("tick") or 0) >= 3, 30)
        client = EtcdClient(fleet.etcd.endpoints, timeout=2.0)
        stop = threading.Event()
        deposed = 0

        def depose() -> None:  # the leader key vanishes again and again: fenced writes
            nonlocal deposed
            while not stop.is_set():
                client.call("kv/deleterange", {"key": _b64("/wyneos/ha/leader")})
                deposed += 1
                stop.wait(0.3)

        thread = threading.Thread(target=depose, daemon=True)
        thread.start()
        seen = []
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                h = replica.health()
                if h is None:
                    continue
                kv = client.get("/wyneos/ha/tick")
                committed = int(kv.value) if kv is not None else 0
                seen.append((h["tick"], committed))
                assert h["tick"] <= committed, f"/healthz showed tick {h['tick']}; etcd had committed {committed}"
        finally:
            stop.set()
            thread.join(5)
            client.close()
        assert deposed > 10 and len(seen) > 20
        metrics = replica.metrics()
        fenced = [line for line in metrics.splitlines() if line.startswith("wyneos_fenced_writes_refused_total ")]
        assert fenced and float(fenced[0].split()[1]) >= 1, "no write was ever fenced: the test proved nothing"


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def test_agents_keep_their_heartbeat_sessions_across_a_failover(tmp_path: Path) -> None:
    """Sessions on every replica: agents open one session each (at the leader, or at a
    follower that forwards their MACed heartbeats as they are); the leader is killed,
    the agents move to another replica and go on with the same session (its ticket),
    without a new handshake, and no node goes offline or isolated."""
    with Fleet(tmp_path, replicas=3, agents=0) as fleet:
        leader = fleet.wait_leader()
        others = [r for r in fleet.replicas if r is not leader]
        token = fleet.enrol_token(uses=2)
        # one agent talks to the leader first, one to a follower (forwarded)
        agents = [AgentThread("s0", ",".join(r.url for r in [leader, *others]), tmp_path / "s0", token),
                  AgentThread("s1", ",".join(r.url for r in [*others, leader]), tmp_path / "s1", token)]
        fleet.agents.extend(agents)
        for a in agents:
            a.start()
        wait_for("both agents heard through their sessions", lambda: all(
            a.agent._sessions is not None and a.agent._sessions.opened == 1 and a.agent.stats.accepted >= 3
            for a in agents), 60)
        wait_for("both nodes committed online", lambda: all(
            (r := _rows(fleet)[0].get(a.agent.node_id)) is not None and r["status"] == "online" for a in agents), 30)
        sessions = [a.agent._sessions.session.id for a in agents]
        leader.kill()
        new = fleet.wait_leader(timeout=30, other_than=leader)
        start = wait_for("the new leader's tick", lambda: (h := new.health()) is not None
                         and h["leader"]["id"] == new.name and h["tick"], 30)
        counts = [a.agent.stats.accepted for a in agents]
        wait_for("heartbeats accepted after the failover", lambda: all(
            a.agent.stats.accepted >= n + 8 for a, n in zip(agents, counts)), 60)
        wait_for("ticks of the new term", lambda: ((new.health() or {}).get("tick") or 0) >= start + 8, 30)
        for a, sid in zip(agents, sessions):
            assert a.agent._sessions.opened == 1 and a.agent._sessions.session.id == sid, \
                f"{a.agent.node_id} opened a new session"
        nodes, actions = _rows(fleet)
        for a in agents:
            assert nodes[a.agent.node_id]["status"] == "online" and not nodes[a.agent.node_id]["isolated"]
        assert not [x for x in actions if x["type"] == "isolate"]


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{" if labels else name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_followers_tell_the_committed_truth(tmp_path: Path) -> None:
    """Issue 21 item 4: a follower's /metrics and /v1/nodes show the committed cluster
    state (nodes by status, the last tick, trust tiers, licences as the leader has them),
    and every replica exports its role and the leader's identity."""
    with Fleet(tmp_path, replicas=2, agents=2) as fleet:
        leader = fleet.wait_leader()
        follower = next(r for r in fleet.replicas if r is not leader)
        # both nodes, not "every node of an empty list": agents that enrolled at the
        # follower are not yet in the leader's registry for a moment
        wait_for("both nodes online and trusted at the leader", lambda: len(
            nodes := _get(leader.url + "/v1/nodes", 5)[1]["nodes"]) == len(fleet.agents) and all(
            n["status"] == "online" and n.get("trust_tier") for n in nodes), 60)

        def same() -> bool:
            lead = {n["id"]: n for n in _get(leader.url + "/v1/nodes", 5)[1]["nodes"]}
            follow = {n["id"]: n for n in _get(follower.url + "/v1/nodes", 5)[1]["nodes"]}
            return lead.keys() == follow.keys() and all(
                follow[i]["status"] == lead[i]["status"] and follow[i]["trust_tier"] == lead[i]["trust_tier"]
                and follow[i]["licence"] == lead[i]["licence"] for i in lead)

        wait_for("the follower's nodes as the leader's", same, 30)
        # read once, no wait: a follower sets its gauges before it publishes the view
        # /v1/nodes answers from (Replica.follow), so they are never older than it
        text = follower.metrics()
        assert _metric(text, "wyneos_nodes", status="online") == 2, text
        assert (_metric(text, "wyneos_last_tick") or 0) >= 1
        assert _metric(text, "wyneos_role", role="follower") == 1 and _metric(text, "wyneos_role", role="leader") == 0
        assert _metric(text, "wyneos_leader_info", id=leader.name) == 1
        assert (_metric(text, "wyneos_leader_changes_total") or 0) >= 1
        tiers = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("wyneos_nodes_by_trust_tier{")]
        assert sum(tiers) == 2, f"trust tiers on the follower: {tiers}"
        # the follower follows etcd's watch: events flow in, the prefix is not read again
        watch = (follower.health() or {})["watch"]
        wait_for("watch events", lambda: (w := (follower.health() or {})["watch"])["synced"]
                 and w["events"] >= watch["events"] + 10, 30)
        assert (follower.health() or {})["watch"]["reloads"] <= 2, "the follower re-read the whole prefix"
        lead_text = leader.metrics()
        assert _metric(lead_text, "wyneos_role", role="leader") == 1
        assert _metric(lead_text, "wyneos_leader_info", id=leader.name) == 1
