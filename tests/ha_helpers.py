"""Helpers for the replica tests: a real etcd cluster, `wyneos serve` replicas as child
processes, and real agents (the ``Agent`` class over HTTP) on threads."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from wyneos_core.ha.local import LocalEtcdCluster, ReplicaProcess, etcd_binary, get_json  # noqa: F401 - used by the ha tests
from wyneos_core.service.agent import Agent

WYNEOS = str(Path(sys.executable).with_name("wyneos"))

RULESET = """\
ruleset: ha-test
stage: enforcement
rules:
  - id: gate-wanted
    description: gate the feature a node asks for (a new decision each time it asks for another)
    when: has(node.metadata.want)
    severity: warning
    message: "wants {node.metadata.want} gated"
    then:
      - gate_feature: {feature: "{node.metadata.want}"}
"""

CONFIG = """\
cluster: {cluster}
tick: {{interval: {tick}}}
heartbeat: {{interval: {tick}, stale_after: {stale}, offline_after: {offline}, max_clock_skew: 30,
            unknown_nodes: reject}}
decide: {{probation_ticks: 1, max_unhealthy_fraction: 0.9}}
mesh: {{topology: star}}
rulesets: {{paths: [ruleset.yaml, 'builtin:healing']}}
plugins: {{disable: [licence], settings: {{service: {{port: 0, replay_window: 60}}}}}}
state: {{backend: etcd, etcd: {{lease_duration: {lease}, renew_deadline: {renew}, retry_period: {retry},
         timeout: {timeout}}}}}
report: {{json_path: null, stdout: none}}
"""

#: the timings of the tests: a 2 s lease, so a failover takes a few seconds
LEASE, RENEW, RETRY, TICK = 2.0, 1.5, 0.25, 0.25


def need_etcd() -> None:
    if etcd_binary() is None:
        pytest.fail("etcd is not installed: run scripts/test-deps.sh as root (installs Debian's etcd-server)")


def etcd_cluster(tmp_path_factory: pytest.TempPathFactory, members: int = 3) -> Iterator[LocalEtcdCluster]:
    """A test module's etcd cluster on loopback ports, stopped when the module is done:
    ``yield from etcd_cluster(tmp_path_factory)`` in a module-scoped fixture."""
    need_etcd()
    cluster = LocalEtcdCluster(tmp_path_factory.mktemp("etcd"), members, election_ms=500).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def write_config(tmp: Path, cluster: str = "ha", *, stale: float = 3.0, offline: float = 6.0,
                 timeout: float = 1.0) -> Path:
    (tmp / "ruleset.yaml").write_text(RULESET)
    path = tmp / "config.yaml"
    path.write_text(CONFIG.format(cluster=cluster, tick=TICK, stale=stale, offline=offline, lease=LEASE,
                                  renew=RENEW, retry=RETRY, timeout=timeout))
    return path




def wait_for(what: str, check: Any, timeout: float, every: float = 0.1) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


Replica = ReplicaProcess


class AgentThread:
    """A real agent on a thread, counting every action it applies (by id)."""

    def __init__(self, node_id: str, servers: str, state_dir: Path, token: str) -> None:
        self.agent = Agent(servers, node_id, state_dir, token=token, interval=TICK, hook="true", max_backoff=0.5,
                           timeout=2.0)
        self.applied: Counter[str] = Counter()
        self.lock = threading.Lock()
        original = self.agent._apply_one

        def counting(action: dict[str, Any]) -> tuple[str, str]:
            status, detail = original(action)
            if status == "applied":
                with self.lock:
                    self.applied[action["id"]] += 1
            return status, detail

        self.agent._apply_one = counting  # type: ignore[method-assign]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, kwargs={"stop": self.stop}, daemon=True)

    def want(self, value: str) -> None:
        self.agent.extra_metadata["want"] = value

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


class Fleet:
    """An etcd cluster, ``n`` replicas and agents, ended by pid at exit."""

    def __init__(self, tmp: Path, replicas: int = 3, agents: int = 3, cluster: str = "ha", *,
                 etcd_timeout: float = 1.0) -> None:
        need_etcd()
        self.tmp = tmp
        self.etcd = LocalEtcdCluster(tmp / "etcd", 3, election_ms=500)
        self.config = write_config(tmp, cluster, timeout=etcd_timeout)
        self.replicas = [Replica(f"r{i}", self.config, self.etcd.url, tmp) for i in range(replicas)]
        self.n_agents = agents
        self.agents: list[AgentThread] = []

    def __enter__(self) -> Fleet:
        self.etcd.start()
        try:
            for r in self.replicas:  # one after the other (the first to start leads)
                r.start()
            self.wait_leader()
            token = self.enrol_token(uses=self.n_agents) if self.n_agents else ""
            servers = ",".join(r.url for r in self.replicas)
            for i in range(self.n_agents):
                a = AgentThread(f"n{i}", servers, self.tmp / f"agent{i}", token)
                a.want("f0")
                self.agents.append(a)
                a.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for a in self.agents:
            a.stop.set()  # all told first, then each waited for
        for a in self.agents:
            a.close()
        if self.replicas:  # stopped at once, each on a thread of its own (the first error raised)
            with ThreadPoolExecutor(len(self.replicas)) as pool:
                list(pool.map(Replica.stop, self.replicas))
        self.etcd.stop()

    def enrol_token(self, uses: int) -> str:
        out = subprocess.run([WYNEOS, "enrol", "token", "-c", str(self.config), "--store", self.etcd.url,
                              "--uses", str(uses)], capture_output=True, text=True, timeout=120, check=True)
        return out.stdout.strip()

    def healths(self) -> dict[str, dict[str, Any]]:
        return {r.name: h for r in self.replicas if (h := r.health()) is not None}

    def leader(self) -> Replica | None:
        for r in self.replicas:
            h = r.health()
            if h is not None and h.get("role") == "leader" and h.get("deciding"):
                return r
        return None

    def wait_leader(self, timeout: float = 20.0, other_than: Replica | None = None) -> Replica:
        return wait_for("a deciding leader", lambda: (r := self.leader()) is not None and r is not other_than and r,
                        timeout)

    def store(self) -> Any:
        from wyneos_core.ha.store import EtcdStateStore

        return EtcdStateStore.open(self.etcd.endpoints, "/wyneos/ha/", timeout=2.0)
