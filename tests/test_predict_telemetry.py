"""Telemetry: metrics in heartbeats, checked on intake, into the detector columns, kept
across restarts (issue 20 item 1). Real HTTP server on 127.0.0.1, real SQLite state file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_helpers import Node, add_token, make_service, wait_for, write_config

from wyneos_core import hookimpl
from wyneos_core.builtin.predict import telemetry_of
from wyneos_core.config import ConfigError, load_config
from wyneos_core.model import Heartbeat
from wyneos_core.predict.interface import Predictions
from wyneos_core.predict.telemetry import FleetPredictions
from wyneos_core.service.identity import sign_request
from wyneos_core.service.server import ServerThread
from wyneos_core.tick import Orchestrator

TELEMETRY = """\
telemetry:
  metrics:
    - {name: cpu, unit: ratio, min: 0, max: 1}
    - {name: disk_used, unit: ratio, min: 0, max: 1}
"""


def signed(node: Node, body: dict) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    return raw, {**sign_request(node.key, node.id, "POST", "/v1/heartbeats", raw), "content-type": "application/json"}


def test_heartbeats_carry_declared_metrics_and_bad_ones_are_refused_by_field(tmp_path: Path) -> None:
    service = make_service(write_config(tmp_path, extra=TELEMETRY + "nodes:\n  - {id: edge-1}\n"))
    node = Node("edge-1")
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        body, headers = node.enrol_request(add_token(service))
        assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        refused = {
            "metrics.nope": {"nope": 0.5},
            "metrics.cpu": {"cpu": 1.5},
            "metrics.disk_used": {"cpu": 0.5, "disk_used": "full"},
        }
        for field, metrics in refused.items():
            raw, headers = signed(node, {"timestamp": time.time(), "metrics": metrics})
            r = client.post("/v1/heartbeats", content=raw, headers=headers)
            assert r.status_code == 422, r.text
            assert r.json()["field"] == field, r.json()
        assert len(service.orchestrator.registry.metrics_inbox) == 0  # a refused heartbeat leaves nothing
        for i in range(5):
            metrics = {"cpu": 0.25, "disk_used": 0.5 + i / 100}
            raw, headers = signed(node, {"timestamp": time.time(), "metrics": metrics})
            assert client.post("/v1/heartbeats", content=raw, headers=headers).status_code == 202
            time.sleep(0.25)
        state = telemetry_of(service.orchestrator)
        answers = FleetPredictions(state, time.time())
        assert wait_for(lambda: answers.latest("edge-1", "disk_used") == pytest.approx(0.54, abs=1e-6))
        assert answers.latest("edge-1", "cpu") == pytest.approx(0.25)
        assert answers.trend("edge-1", "disk_used") > 0
        assert answers.latest("edge-1", "memory") is None and answers.latest("ghost", "cpu") is None


class Feed:
    """Heartbeats given by the test, one batch per tick."""

    def __init__(self) -> None:
        self.queue: list[Heartbeat] = []

    @hookimpl
    def wyneos_heartbeat(self, ctx):
        out, self.queue = self.queue, []
        return out


def orchestrator(tmp_path: Path, clock, feed: Feed) -> Orchestrator:
    config = load_config(text=f"nodes: [{{id: n1}}, {{id: n2}}]\nstate: {{path: {tmp_path / 'state.db'}}}\n"
                              "plugins: {disable: [licence]}\n" + TELEMETRY + "  save_every: 5\n")
    return Orchestrator(config, clock=clock, plugins=[feed], load_entrypoints=False)


def run(orch: Orchestrator, feed: Feed, now: list[float], ticks: int, start: int = 0) -> None:
    for i in range(start, start + ticks):
        now[0] += 10.0
        feed.queue = [Heartbeat("n1", now[0], metrics={"cpu": 0.3 + 0.01 * (i % 3), "disk_used": 0.1 + 0.001 * i}),
                      Heartbeat("n2", now[0], metrics={"cpu": 0.5})]
        orch.tick()


def test_the_predict_step_answers_the_protocol_with_evidence(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    feed = Feed()
    orch = orchestrator(tmp_path, lambda: now[0], feed)
    answers = []

    class Reader:
        @hookimpl
        def wyneos_governance(self, ctx):
            answers.append(ctx.scratch.get("predict"))

    orch.pm.register(Reader(), "reader")
    run(orch, feed, now, 150)
    found = answers[-1]
    assert isinstance(found, Predictions)
    assert found.latest("n1", "disk_used") == pytest.approx(0.249, abs=1e-6)
    assert found.trend("n1", "disk_used") == pytest.approx(0.0001, rel=0.05)  # 0.001 per 10 s
    assert found.forecast("n1", "disk_used", 3600) == pytest.approx(0.249 + 0.36, abs=0.01)
    assert found.time_to("n1", "disk_used", 1.0) == pytest.approx((1.0 - 0.249) / 0.0001, rel=0.05)
    assert found.latest("n2", "disk_used") is None  # n2 never reported it
    assert 0.0 <= found.anomaly("n1", "cpu") <= 1.0
    evidence = found.evidence("n1", "disk_used")
    assert evidence["metric"] == "disk_used" and evidence["unit"] == "ratio"
    assert evidence["observed"] == pytest.approx(0.249, abs=1e-6)
    low, high = evidence["expected"]
    assert low <= evidence["observed"] <= high
    assert evidence["samples"] == 150 and len(evidence["recent"]) == 8
    assert found.evidence("n1", "nope") == {}
    orch.stop()


def test_detector_columns_survive_a_restart(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    feed = Feed()
    first = orchestrator(tmp_path, lambda: now[0], feed)
    run(first, feed, now, 120)
    before = FleetPredictions(telemetry_of(first), now[0]).evidence("n1", "disk_used")
    first.stop()  # saves at shutdown

    feed2 = Feed()
    second = orchestrator(tmp_path, lambda: now[0], feed2)
    after = FleetPredictions(telemetry_of(second), now[0]).evidence("n1", "disk_used")
    assert after == before
    run(second, feed2, now, 1, start=120)  # and the detector goes on from there
    assert FleetPredictions(telemetry_of(second), now[0]).evidence("n1", "disk_used")["samples"] == 121
    second.stop()


def test_a_damaged_saved_state_is_reported_and_the_detectors_learn_again(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    feed = Feed()
    first = orchestrator(tmp_path, lambda: now[0], feed)
    run(first, feed, now, 10)
    first.store.put_blob("telemetry", first.store.blob("telemetry")[:-5])  # truncated
    first._telemetry = None  # nothing saved again at stop
    first.stop()

    second = orchestrator(tmp_path, lambda: now[0], Feed())
    state = telemetry_of(second)
    assert state.node_ids == []
    assert any("telemetry: the saved detector state was not used" in note for note in second.startup_notes)
    second.stop()


def test_metrics_must_be_declared_once_with_bounds_in_order() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(text="telemetry:\n  metrics:\n    - {name: cpu, min: 0, max: 1}\n"
                         "    - {name: cpu, min: 1, max: 0}\n")
    text = str(caught.value)
    assert "telemetry.metrics[1].name: duplicate metric 'cpu'" in text
    assert "telemetry.metrics[1].max: must be more than min" in text


def test_columns_take_128_bytes_per_node_and_metric_in_the_plugin(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    feed = Feed()
    orch = orchestrator(tmp_path, lambda: now[0], feed)
    run(orch, feed, now, 2)
    state = telemetry_of(orch)
    per_series = state.cols.nbytes / state.cols.size
    assert per_series == 128
    assert np.count_nonzero(state.cols.get("count")) == 3  # n1 cpu and disk_used, n2 cpu
    orch.stop()


def test_a_real_agent_reports_metrics_from_a_command_and_a_file(tmp_path: Path) -> None:
    """``wyneos agent --metric NAME=COMMAND --metrics-file PATH`` as a process: its values
    reach the detectors; a metric the server does not declare is refused once, then left
    out (the node's heartbeats go on)."""
    import subprocess
    import sys

    service = make_service(write_config(tmp_path, extra=TELEMETRY + "nodes:\n  - {id: edge-2}\n"))
    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text(json.dumps({"disk_used": 0.625, "undeclared": 3}))
    with ServerThread(service) as url:
        command = [sys.executable, "-m", "wyneos_core.cli", "agent", "--server", url, "--node", "edge-2",
                   "--state-dir", str(tmp_path / "agent"), "--token", add_token(service), "--interval", "0.2",
                   "--count", "6", "--metric", f"cpu={sys.executable} -c 'print(0.375)'",
                   "--metrics-file", str(metrics_file)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "refused metric 'undeclared'" in done.stderr
        answers = FleetPredictions(telemetry_of(service.orchestrator), time.time())
        assert wait_for(lambda: answers.latest("edge-2", "cpu") == 0.375)
        assert answers.latest("edge-2", "disk_used") == 0.625
        assert wait_for(lambda: answers.evidence("edge-2", "cpu").get("samples", 0) >= 4)
