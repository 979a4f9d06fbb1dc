"""Replicas on a real 3-member etcd cluster, with real agents: failovers lose nothing,
double nothing, isolate no one; etcd member loss, quorum loss and a paused leader.

Every wait is bounded; no test asserts a time (failover times: bench/bench_failover.py).
The 10-kill soak runs with ``WYNEOS_HA_SOAK=1 .venv/bin/python -m pytest -m ha_soak
tests/test_ha_failover.py``; the default suite kills the leader three times.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from ha_helpers import LEASE, TICK, Fleet, wait_for

pytestmark = pytest.mark.slow

#: a new leader must tick within the lease plus two ticks; the bound below leaves room
#: for a loaded machine (2 cores shared) without ever asserting a time
FAILOVER_BOUND = LEASE + 2 * TICK + 15.0


def committed(fleet: Fleet) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(tick rows, action rows, node rows)`` as committed in etcd."""
    store = fleet.store()
    try:
        return store.tick_rows(), store.actions(), store.node_rows()
    finally:
        store.close()


def check_ticks(rows: list[dict[str, Any]]) -> None:
    """Committed tick numbers run on without a gap, each written exactly once, and the
    terms that wrote them never go back (no deposed leader wrote after its successor)."""
    rows = sorted(rows, key=lambda r: r["tick"])
    terms = [r["term"] for r in rows]
    assert terms == sorted(terms), f"a deposed leader wrote after its successor: {[(r['tick'], r['leader'], r['term']) for r in rows]}"
    numbers = [r["tick"] for r in rows]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), f"gap in committed ticks: {numbers}"
    twice = [r["tick"] for r in rows if r["writes"] != 1]
    assert not twice, f"ticks written more than once: {twice}"


def wanted_applied(fleet: Fleet, value: str) -> bool:
    """Every agent applied the gate_feature action asking for ``value``."""
    store = fleet.store()
    try:
        live = {(a["target"], a["params"].get("feature")): a["id"] for a in store.actions("in_force")
                if a["type"] == "gate_feature"}
    finally:
        store.close()
    for agent in fleet.agents:
        aid = live.get((agent.agent.node_id, value))
        if aid is None or agent.applied[aid] < 1:
            return False
    return True


def no_isolation(fleet: Fleet) -> None:
    ticks, actions, nodes = committed(fleet)
    agent_ids = {a.agent.node_id for a in fleet.agents}
    isolated = [n["id"] for n in nodes if n["id"] in agent_ids and n["isolated"]]
    assert not isolated, f"nodes isolated: {isolated}"
    cut = [a for a in actions if a["type"] == "isolate" and a["target"] in agent_ids]
    assert not cut, f"isolations decided: {cut}"


def applied_once(fleet: Fleet) -> None:
    for agent in fleet.agents:
        twice = {aid: n for aid, n in agent.applied.items() if n > 1}
        assert not twice, f"agent {agent.agent.node_id} applied actions more than once: {twice}"


def kill_leader_rounds(tmp: Path, kills: int) -> None:
    rng = random.Random(int(os.environ.get("WYNEOS_HA_SEED", "14")))
    with Fleet(tmp, replicas=3, agents=3) as fleet:
        wait_for("the first decision applied by every agent", lambda: wanted_applied(fleet, "f0"), 30)
        for k in range(1, kills + 1):
            leader = fleet.wait_leader()
            before = leader.health()
            assert before is not None
            value = f"f{k}"
            for agent in fleet.agents:  # a new decision in flight while the leader dies
                agent.want(value)
            time.sleep(rng.uniform(0.0, 4 * TICK))  # a random moment of its tick
            last_seen_tick = (leader.health() or before)["tick"]
            leader.kill()
            new = fleet.wait_leader(timeout=FAILOVER_BOUND, other_than=leader)
            # the new leader ticks, and tick numbers carry on from the cluster's
            wait_for("the new leader's tick", lambda: (h := new.health()) is not None and h["tick"] > last_seen_tick
                     and h["leader"]["id"] == new.name, FAILOVER_BOUND)
            leader.start()  # back as a follower, on the same port
            wait_for(f"decision {value} applied by every agent", lambda: wanted_applied(fleet, value), 30)
            no_isolation(fleet)
            applied_once(fleet)
        ticks, actions, _ = committed(fleet)
        check_ticks(ticks)
        assert len({t["leader"] for t in ticks}) >= 2, "the ticks were all written by one replica"
        # no decided action lost: every gate decision committed was applied by its agent
        by_node = {a.agent.node_id: a for a in fleet.agents}
        for action in actions:
            if action["type"] == "gate_feature" and action["state"] in ("in_force", "cleared"):
                agent = by_node[action["target"]]
                assert agent.applied[action["id"]] == 1, f"decision {action} applied {agent.applied[action['id']]}x"
        applied_once(fleet)
        no_isolation(fleet)
        assert len({t["term"] for t in ticks}) >= kills + 1, "a term per leader: every kill made a new leader"
        # each replica counts the leaders it saw since it started (a killed one starts again from 0)
        for r in fleet.replicas:
            wait_for(f"{r.name} counting the leader it saw", lambda: _metric(r.metrics(),
                     "wyneos_leader_changes_total") >= 1, 10)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_leader_killed_three_times_loses_and_doubles_nothing(tmp_path: Path) -> None:
    kill_leader_rounds(tmp_path, 3)


@pytest.mark.ha_soak
@pytest.mark.skipif(not os.environ.get("WYNEOS_HA_SOAK"), reason="set WYNEOS_HA_SOAK=1 (see docs/ha.md)")
def test_leader_killed_ten_times_soak(tmp_path: Path) -> None:
    kill_leader_rounds(tmp_path, int(os.environ.get("WYNEOS_HA_KILLS", "10")))


def test_one_etcd_member_lost_service_goes_on(tmp_path: Path) -> None:
    with Fleet(tmp_path, replicas=2, agents=2) as fleet:
        wait_for("the first decision applied", lambda: wanted_applied(fleet, "f0"), 30)
        fleet.etcd.kill(0)
        start = fleet.wait_leader(timeout=FAILOVER_BOUND).health()
        assert start is not None
        for agent in fleet.agents:
            agent.want("f1")
        wait_for("ticks going on with one member down",
                 lambda: (lead := fleet.leader()) is not None and (h := lead.health()) is not None
                 and h["tick"] >= start["tick"] + 10, 30)
        wait_for("a decision taken with one member down", lambda: wanted_applied(fleet, "f1"), 30)
        fleet.etcd.restart(0)
        check_ticks(committed(fleet)[0])
        no_isolation(fleet)
        applied_once(fleet)


def test_quorum_lost_leader_stops_deciding_heartbeats_accepted_then_resumes(tmp_path: Path) -> None:
    with Fleet(tmp_path, replicas=2, agents=2) as fleet:
        wait_for("the first decision applied", lambda: wanted_applied(fleet, "f0"), 30)
        leader = fleet.wait_leader()
        fleet.etcd.kill(1)
        fleet.etcd.kill(2)
        # no replica decides without a quorum (no split brain)
        wait_for("no replica deciding", lambda: all(not h["deciding"] for h in fleet.healths().values())
                 and len(fleet.healths()) == 2, FAILOVER_BOUND)
        frozen = {name: h["tick"] for name, h in fleet.healths().items()}
        accepted = [a.agent.stats.accepted for a in fleet.agents]
        wait_for("heartbeats accepted without a quorum",
                 lambda: all(a.agent.stats.accepted >= n + 3 for a, n in zip(fleet.agents, accepted)), 20)
        for name, h in fleet.healths().items():
            assert h["tick"] == frozen[name] and not h["deciding"], f"{name} ticked without a quorum: {h}"
        fleet.etcd.restart(1)
        fleet.etcd.restart(2)
        new = fleet.wait_leader(timeout=30)
        top = max(frozen.values())
        wait_for("deciding resumed", lambda: (h := new.health()) is not None and h["tick"] > top + 3, 30)
        for agent in fleet.agents:
            agent.want("f1")
        wait_for("a decision after the quorum came back", lambda: wanted_applied(fleet, "f1"), 30)
        check_ticks(committed(fleet)[0])
        no_isolation(fleet)
        applied_once(fleet)
        assert leader.alive


def test_paused_leader_never_writes_after_a_new_leader_took_over(tmp_path: Path) -> None:
    with Fleet(tmp_path, replicas=2, agents=2) as fleet:
        wait_for("the first decision applied", lambda: wanted_applied(fleet, "f0"), 30)
        old = fleet.wait_leader()
        old.signal(signal.SIGSTOP)
        try:
            new = fleet.wait_leader(timeout=FAILOVER_BOUND, other_than=old)
            first = wait_for("the new leader's first tick", lambda: (h := new.health()) is not None
                             and h["leader"]["id"] == new.name and h["tick"], FAILOVER_BOUND)
            for agent in fleet.agents:  # decisions made while the old leader sleeps
                agent.want("f1")
        finally:
            old.signal(signal.SIGCONT)
        wait_for("the old leader back as a follower", lambda: (h := old.health()) is not None
                 and h["role"] == "follower", FAILOVER_BOUND)
        wait_for("decisions after the pause applied", lambda: wanted_applied(fleet, "f1"), 30)
        mark = (new.health() or {}).get("tick", first)
        wait_for("more ticks", lambda: (h := new.health()) is not None and h["tick"] > mark + 5, 30)
        ticks = sorted(committed(fleet)[0], key=lambda t: t["tick"])
        check_ticks(ticks)
        takeover = next(t["tick"] for t in ticks if t["leader"] == new.name)
        late = [t for t in ticks if t["tick"] > takeover and t["leader"] == old.name]
        assert not late, f"the paused leader wrote after the takeover: {late}"
        assert ticks[-1]["tick"] > max(first, takeover)
        applied_once(fleet)
        no_isolation(fleet)


def test_embedded_server_reports_itself_leader(tmp_path: Path) -> None:
    from service_helpers import make_service, write_config as service_config

    from wyneos_core.service.server import ServerThread
    from ha_helpers import get_json

    service = make_service(service_config(tmp_path))
    with ServerThread(service) as url:
        health = wait_for("a tick", lambda: (h := get_json(url + "/healthz")) is not None and h["tick"] >= 1 and h,
                          20)
    assert health["role"] == "leader" and health["deciding"] is True and health["backend"] == "sqlite"
    assert health["leader"]["id"] == "embedded"
