"""Leader election on an etcd lease: the config's invariants, one leader at a time, a
leader that cannot renew stops deciding before its lease can expire."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ha_helpers import etcd_cluster, need_etcd, wait_for
from wyneos_core.ha.election import ElectionConfig, LeaderElector
from wyneos_core.ha.etcd import EtcdClient
from wyneos_core.ha.local import LocalEtcdCluster, free_port


def test_defaults_are_kubernetes_leader_election() -> None:
    cfg = ElectionConfig()
    assert (cfg.lease_duration, cfg.renew_deadline, cfg.retry_period) == (15.0, 10.0, 2.0)
    assert cfg.ttl == 15


@pytest.mark.parametrize(("args", "message"), [
    ((10, 10, 2), "greater than renew_deadline"),
    ((15, 2, 2), "1.2 x retry_period"),
    ((1, 0.5, 0.1), "at least 2"),
    ((15, 10, 0), "retry_period must be"),
    ((float("nan"), 10, 2), "lease_duration must be"),
    ((True, 10, 2), "lease_duration must be"),
])
def test_bad_timings_are_refused_when_made(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ElectionConfig(*args)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory):
    yield from etcd_cluster(tmp_path_factory)


class Candidate:
    def __init__(self, name: str, endpoints: list, key: str, cfg: ElectionConfig) -> None:
        self.name = name
        self.events: list[str] = []
        self.elector = LeaderElector(EtcdClient(endpoints, timeout=0.5), key, {"id": name}, cfg,
                                     on_started_leading=lambda term: self.events.append(f"start {term}"),
                                     on_stopped_leading=lambda: self.events.append("stop"))


CFG = ElectionConfig(2, 1.5, 0.25)


def test_one_leader_at_a_time_and_a_stopped_leader_hands_over(etcd: LocalEtcdCluster) -> None:
    cands = [Candidate(f"c{i}", etcd.endpoints, "/election/a/leader", CFG) for i in range(3)]
    for c in cands:
        c.elector.start()
    try:
        first = wait_for("a leader", lambda: [c for c in cands if c.elector.leading], 10)
        assert len(first) == 1
        leader = first[0]
        term = leader.elector.may_decide()
        others = [c for c in cands if c is not leader]
        wait_for("followers seeing the leader", lambda: all(
            c.elector.leader is not None and c.elector.leader.identity["id"] == leader.name for c in others), 10)
        leader.elector.stop()  # gives the key up at once
        assert leader.events[-1] == "stop" and not leader.elector.leading
        second = wait_for("a new leader", lambda: [c for c in others if c.elector.leading], 10)
        assert len(second) == 1
        assert second[0].elector.may_decide() > term  # a new term: a greater fencing token
    finally:
        for c in cands:
            c.elector.stop()


def test_a_leader_that_cannot_renew_stops_deciding_before_its_lease_expires(tmp_path: Path) -> None:
    """Cut the leader off from etcd (its only endpoint dies): it stops deciding on its own,
    and a replica still connected takes over only once the old lease has expired."""
    need_etcd()
    with LocalEtcdCluster(tmp_path, 3, election_ms=500) as cluster:
        cut_off = Candidate("lonely", [cluster.endpoints[0]], "/election/b/leader", CFG)
        cut_off.elector.start()
        try:
            wait_for("the lonely leader", lambda: cut_off.elector.leading, 10)
            other = Candidate("other", cluster.endpoints[1:], "/election/b/leader", CFG)
            other.elector.start()
            wait_for("the other seeing the leader", lambda: other.elector.leader is not None, 10)
            overlap = threading.Event()

            def watch() -> None:  # never both deciding at once
                while not other.elector.leading:
                    if cut_off.elector.leading and other.elector.leading:
                        overlap.set()
                    threading.Event().wait(0.005)
                if cut_off.elector.leading:
                    overlap.set()

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            cluster.kill(0)
            wait_for("the cut-off leader to stop deciding", lambda: not cut_off.elector.leading, 10)
            wait_for("the other to lead", lambda: other.elector.leading, 15)
            watcher.join(5)
            assert not overlap.is_set()
            assert cut_off.events[-1] == "stop"
            other.elector.stop()
        finally:
            cut_off.elector.stop()


def test_an_unreachable_cluster_never_makes_a_leader() -> None:
    lonely = Candidate("x", [("127.0.0.1", free_port())], "/election/c/leader", CFG)
    lonely.elector.start()
    try:
        threading.Event().wait(4 * CFG.retry_period)  # a few campaign rounds
        assert not lonely.elector.leading and lonely.events == []
    finally:
        lonely.elector.stop()
