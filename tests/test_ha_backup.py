"""Backups of replicas on etcd: taken while a replica leads, restored onto a fresh etcd
cluster in a fresh directory, and the agent pinned to the orchestrator key keeps working
against the restored replica; a restore into a prefix that holds a cluster is refused."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from ha_helpers import WYNEOS, AgentThread, LocalEtcdCluster, ReplicaProcess, need_etcd, wait_for, write_config

pytestmark = pytest.mark.slow


def _wyneos(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([WYNEOS, *args], capture_output=True, text=True, timeout=120)


def _leading(replica: ReplicaProcess) -> bool:
    health = replica.health() or {}
    return health.get("role") == "leader" and bool(health.get("deciding"))


def test_a_replica_backup_restored_on_a_fresh_etcd_keeps_pinned_agents_working(tmp_path: Path) -> None:
    need_etcd()
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    config = write_config(one)
    backup = tmp_path / "backup"
    etcd = LocalEtcdCluster(tmp_path / "etcd1", 1, election_ms=500).start()
    replica = ReplicaProcess("r0", config, etcd.url, one)
    agent = None
    try:
        replica.start()
        wait_for("a leader", lambda: _leading(replica), 30)
        token = _wyneos("enrol", "token", "-c", str(config), "--store", etcd.url).stdout.strip()
        agent = AgentThread("n0", replica.url, tmp_path / "agent", token)
        agent.want("f0")
        agent.start()
        wait_for("an action applied", lambda: sum(agent.applied.values()) >= 1, 30)
        done = _wyneos("state", "backup", str(backup), "-c", str(config), "--store", etcd.url)
        assert done.returncode == 0, done.stderr
    finally:
        if agent is not None:
            agent.close()
        replica.stop()
        etcd.stop()
    # the leader ended on SIGTERM by itself (its etcd watch let go at once), not killed after 15 s
    assert replica.proc.returncode != -signal.SIGKILL, "the leading replica did not end on SIGTERM"
    manifest = json.loads((backup / "wyneos-backup.json").read_text())
    assert set(manifest["files"]) == {"etcd", "key"} and manifest["backend"] == "etcd"
    assert manifest["etcd_keys"] > 5 and manifest["last_tick"] >= 1
    snapshot = json.loads((backup / "etcd-snapshot.json").read_text())
    keys = {k for k, _ in snapshot["kvs"]}
    assert "tick" in keys and "leader" not in keys and any(k.startswith("keys/") for k in keys)
    assert not list(tmp_path.glob(".wyneos-etcd-*"))  # the temporary copy is gone

    # a fresh machine: the config and its ruleset, a new etcd cluster
    for name in ("config.yaml", "ruleset.yaml"):
        shutil.copy(one / name, two / name)
    etcd = LocalEtcdCluster(tmp_path / "etcd2", 1, election_ms=500).start()
    replica = ReplicaProcess("r1", two / "config.yaml", etcd.url, two)
    agent = None
    try:
        done = _wyneos("state", "restore", str(backup), "-c", str(two / "config.yaml"), "--store", etcd.url)
        assert done.returncode == 0, done.stderr
        again = _wyneos("state", "restore", str(backup), "-c", str(two / "config.yaml"), "--store", etcd.url)
        assert again.returncode == 1 and "holds a cluster already" in again.stderr
        replica.start()
        wait_for("a leader", lambda: _leading(replica), 30)
        wait_for("ticks after the restored one", lambda: (replica.health() or {}).get("tick", 0)
                 > manifest["last_tick"], 30)  # numbering carries on from the backup
        agent = AgentThread("n0", replica.url, tmp_path / "agent", token)  # same state dir: the key it pinned
        agent.want("f1")  # a new decision, signed by the restored key
        agent.start()
        # applied: the agent accepted the restored server's enrolment answer and signature
        # (with another key it refuses both and applies nothing)
        wait_for("the new action applied", lambda: len(agent.applied) >= 1, 40)
    finally:
        if agent is not None:
            agent.close()
        replica.stop()
        etcd.stop()
