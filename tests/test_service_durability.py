"""kill -9 of a real `wyneos serve` process: no committed decision is lost, the state
file stays sound, and a restart carries on (same enrolled keys, same decisions in force,
tick numbers going on, the isolated node reinstated once it is back)."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from service_helpers import Node, wait_for, write_config

pytestmark = pytest.mark.slow


class ServeProcess:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wyneos_core.cli", "serve", "-c", str(config), "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=config.parent)
        line = self.proc.stdout.readline()
        assert "listening on" in line, line + self.proc.stdout.read()
        self.url = line.split("listening on ")[1].split()[0]
        self.client = httpx.Client(base_url=self.url, timeout=5)

    def kill9(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


class Heartbeats:
    """Signed heartbeats for some nodes every 50 ms to whichever server is current."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.nodes: list[Node] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self.stop.wait(0.05):
                for node in list(self.nodes):
                    body, headers = node.heartbeat()
                    try:
                        client.post(f"{self.url}/v1/heartbeats", content=body, headers=headers)
                    except httpx.HTTPError:
                        pass


def committed(db: Path) -> tuple[int, dict[str, str], str]:
    conn = sqlite3.connect(db)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        tick = conn.execute("SELECT COALESCE(MAX(tick), 0) FROM ticks").fetchone()[0]
        actions = dict(conn.execute("SELECT id, state FROM actions"))
    finally:
        conn.close()
    return tick, actions, check


def test_kill_9_loses_no_committed_decision_and_restart_carries_on(tmp_path):
    config = write_config(tmp_path, interval=0.1, stale=0.4, offline=0.8)
    db = tmp_path / "state.db"
    nodes = [Node("n1"), Node("n2"), Node("n3")]
    token = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "enrol", "token", "-c", str(config),
                            "--uses", "3"], capture_output=True, text=True, check=True).stdout.strip()
    server = ServeProcess(config)
    sender = Heartbeats()
    try:
        for node in nodes:
            body, headers = node.enrol_request(token)
            assert server.client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        sender.url, sender.nodes = server.url, nodes[:2]  # n3 stays silent: offline, then isolated
        sender.thread.start()
        isolate = wait_for(lambda: [a for a in server.client.get("/v1/actions").json()["in_force"]
                                    if a["type"] == "isolate" and a["target"] == "n3"])[0]
        rng = random.Random(6)
        seen_tick = 0
        for cycle in range(3):
            # decisions the API reports are committed ones (it reads the state file)
            before = server.client.get("/v1/actions").json()
            assert before["committed_tick"] >= seen_tick
            time.sleep(rng.uniform(0.05, 0.35))  # kill at a random point: between or during ticks
            server.kill9()
            tick, actions, check = committed(db)
            assert check == "ok"
            assert tick >= before["committed_tick"]
            for a in before["in_force"]:
                assert a["id"] in actions, f"committed decision {a} lost by kill -9 (cycle {cycle})"
            assert actions[isolate["id"]] == "in_force"
            seen_tick = tick
            server = ServeProcess(config)
            sender.url = server.url
            health = wait_for(lambda: (h := server.client.get("/healthz").json())["tick"] > seen_tick and h)
            assert health["enrolled"] == 3  # keys survived: no re-enrolment needed
            after = server.client.get("/v1/actions").json()
            assert isolate["id"] in {a["id"] for a in after["in_force"]}
            assert server.client.get("/v1/nodes/n3").json()["isolated"] is True
            wait_for(lambda: server.client.get("/v1/nodes/n1").json()["status"] == "online")
        # carry on: n3 comes back, its isolation clears and it is reinstated
        sender.nodes = nodes
        wait_for(lambda: server.client.get("/v1/nodes/n3").json()["isolated"] is False)
        events = server.client.get("/v1/actions").json()["events"]
        assert any(e["action_id"] == isolate["id"] and e["state"] == "cleared" for e in events)
    finally:
        sender.stop.set()
        server.stop()
    tick, actions, check = committed(db)
    assert check == "ok" and actions[isolate["id"]] == "cleared"
    conn = sqlite3.connect(db)
    reinstated = conn.execute("SELECT COUNT(*) FROM actions WHERE type='reinstate' AND target='n3'").fetchone()[0]
    conn.close()
    assert reinstated == 1
