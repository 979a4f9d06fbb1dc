"""Complete backups: taken online from a running server, restored into a fresh
directory, and the agents pinned to the orchestrator key keep working; a restore that
would change the key is refused unless asked; a changed backup is refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from service_helpers import Quarantine, add_token, make_service, wait_for, write_config
from wyneos_core.backup import BackupError, companions_of, read_manifest, restore
from wyneos_core.config import load_config
from wyneos_core.service.agent import Agent
from wyneos_core.service.orchestrator_key import OrchestratorKey
from wyneos_core.service.server import ServerThread, bind


def _wyneos(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wyneos_core.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_agent(agent: Agent, until) -> None:  # noqa: ANN001
    """Run ``agent`` until ``until()``; what it raised (a refused key) fails the test."""
    stop = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            agent.run(duration=60, stop=stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            failed.append(exc)
            stop.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: failed or until(), timeout=30)
    finally:
        stop.set()
        thread.join(20)
    assert not failed, failed


def test_online_backup_restored_into_a_fresh_directory_keeps_pinned_agents_working(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    config = write_config(one, stale=60, offline=120)
    ledger = companions_of(load_config(config)).ledger
    ledger.write_text('{"newest_issue": {"lic-1": 1700000000.0}, "revocation_version": 3}\n')
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    service = make_service(config, plugins=(Quarantine(),), port=port)
    fingerprint = service.okey.fingerprint
    with ServerThread(service, port=port) as url, httpx.Client(base_url=url) as client:
        agent = Agent(url, "w-1", tmp_path / "agent", token=add_token(service), interval=0.1,
                      metadata={"role": "bad"})  # pins the key at its first enrolment
        _run_agent(agent, lambda: agent.state["isolated"])
        wait_for(lambda: client.get("/v1/nodes/w-1").json().get("isolated"))
        done = _wyneos("state", "backup", str(tmp_path / "backup"), "--config", str(config))  # the server runs on
        assert done.returncode == 0, done.stderr
        assert client.get("/healthz").json()["status"] == "ok"
    service.orchestrator.stop()
    manifest = read_manifest(tmp_path / "backup")
    assert manifest["orchestrator_key"] == fingerprint and manifest["last_tick"] >= 1
    assert set(manifest["files"]) == {"state", "key", "ledger"}
    assert (tmp_path / "backup" / "orchestrator.key").stat().st_mode & 0o077 == 0

    shutil.copy(config, two / "config.yaml")  # a fresh machine: the config, nothing else
    done = _wyneos("state", "restore", str(tmp_path / "backup"), "--config", str(two / "config.yaml"))
    assert done.returncode == 0, done.stderr
    assert "restored" in done.stdout and fingerprint in done.stdout
    assert (two / ledger.name).read_text() == ledger.read_text()  # the licence ledger came along

    restored = make_service(two / "config.yaml", plugins=(Quarantine(),), port=port)
    assert restored.okey.fingerprint == fingerprint  # not a new key
    try:
        with ServerThread(restored, port=port) as url, httpx.Client(base_url=url) as client:
            node = client.get("/v1/nodes/w-1").json()
            assert node["enrolled"] is True and node["isolated"] is True  # keys and decisions came back
            agent.extra_metadata["role"] = "good"  # the cause clears: a signed reinstate must reach it
            _run_agent(agent, lambda: not agent.state["isolated"])
            assert not client.get("/v1/actions").json()["refusals"]  # nothing the agent refused
            # a new agent pinned in advance to the key (by fingerprint) enrols and runs
            done = _wyneos("agent", "--server", url, "--node", "w-2", "--state-dir", str(tmp_path / "agent2"),
                           "--token", add_token(restored), "--orchestrator-key", fingerprint, "--count", "2")
            assert done.returncode == 0, done.stderr
    finally:
        restored.orchestrator.stop()


def test_a_restore_that_would_change_the_key_is_refused_unless_asked(tmp_path: Path) -> None:
    one, other = tmp_path / "one", tmp_path / "other"
    for d in (one, other):
        d.mkdir()
        write_config(d)
        assert _wyneos("tick", "--config", str(d / "config.yaml"), "-q").returncode == 0
        OrchestratorKey.for_state(d / "state.db")  # each has its own key
    assert _wyneos("state", "backup", str(tmp_path / "b"), "--config", str(one / "config.yaml")).returncode == 0
    before = {p.name: _digest(p) for p in other.iterdir()}
    done = _wyneos("state", "restore", str(tmp_path / "b"), "--config", str(other / "config.yaml"))
    assert done.returncode == 1 and "would change the key" in done.stderr and "--replace-key" in done.stderr
    assert {p.name: _digest(p) for p in other.iterdir()} == before  # nothing changed
    done = _wyneos("state", "restore", str(tmp_path / "b"), "--config", str(other / "config.yaml"), "--replace-key")
    assert done.returncode == 0, done.stderr
    assert OrchestratorKey.for_state(other / "state.db").fingerprint == \
        OrchestratorKey.for_state(one / "state.db").fingerprint


def test_a_changed_or_incomplete_backup_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    write_config(tmp_path)
    config = load_config(tmp_path / "config.yaml")
    assert _wyneos("tick", "--config", str(tmp_path / "config.yaml"), "-q").returncode == 0
    where = companions_of(config)
    OrchestratorKey.for_state(where.state)
    assert _wyneos("state", "backup", str(tmp_path / "b"), "--config", str(tmp_path / "config.yaml")).returncode == 0
    done = _wyneos("state", "backup", str(tmp_path / "b"), "--config", str(tmp_path / "config.yaml"))
    assert done.returncode == 1 and "not an empty directory" in done.stderr  # never written over
    state = tmp_path / "b" / "state.db"
    data = bytearray(state.read_bytes())
    data[-100] ^= 0xFF
    state.write_bytes(bytes(data))
    before = _digest(where.state)
    with pytest.raises(BackupError, match="changed since the backup was taken"):
        restore(tmp_path / "b", where)
    assert _digest(where.state) == before
    manifest = json.loads((tmp_path / "b" / "wyneos-backup.json").read_text())
    manifest["format"] = "something/else"
    (tmp_path / "b" / "wyneos-backup.json").write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="not a WyneOS backup manifest"):
        restore(tmp_path / "b", where)
    done = _wyneos("state", "backup", str(tmp_path / "c"), "--config", str(tmp_path / "config.yaml"),
                   "--state", str(tmp_path / "nothing.db"))
    assert done.returncode == 1 and "no state file there" in done.stderr and not (tmp_path / "c").exists()


def test_the_backup_example_in_the_docs_runs_twice_in_one_directory(tmp_path: Path) -> None:
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    [script] = re.findall(r"```sh backup-example\n(.*?)```", page, re.S)
    write_config(tmp_path)
    (tmp_path / "config.yaml").rename(tmp_path / "cluster.yaml")
    bindir = Path(sys.executable).parent
    for _ in range(2):
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script.replace("wyneos ", f"{bindir}/wyneos ")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        key_id = OrchestratorKey.for_state(tmp_path / "state.db").key_id
        assert done.stdout.strip().splitlines()[-1].split() == ["key", "id", key_id]  # the same key, restored
        assert (tmp_path / "restored" / "state.db").is_file()
