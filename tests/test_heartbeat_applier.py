"""Accepted batches are applied to the registry between ticks (``service.applier``): the
next tick reports them, and the metrics count each heartbeat once."""

from __future__ import annotations

import json
import time

import httpx
from service_helpers import Node, add_token, make_service, wait_for, write_config

from wyneos_core.intake import CheckedHeartbeat
from wyneos_core.service.server import ServerThread


def _counter(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def test_a_batch_is_applied_before_the_next_tick_and_reported_by_it_once(tmp_path):
    service = make_service(write_config(tmp_path, interval=3600, stale=7200, offline=9000))
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        wait_for(lambda: client.get("/healthz").json()["tick"] >= 1)  # the next tick is an hour away
        nodes = [Node(f"n{i}") for i in range(5)]
        token = add_token(service, uses=len(nodes))
        for node in nodes:
            body, headers = node.enrol_request(token)
            assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        registry = service.orchestrator.registry
        ticks = service.orchestrator.tick_number
        batch = json.dumps({"heartbeats": [n.batch_item(load=0.75) for n in nodes]}).encode()
        r = client.post("/v1/heartbeats", content=batch, headers={"content-type": "application/json"})
        assert r.status_code == 202 and r.json()["accepted"] == 5
        wait_for(lambda: all(registry[n.id].last_seen is not None for n in nodes))
        assert service.orchestrator.tick_number == ticks  # applied by no tick
        assert [registry[n.id].load for n in nodes] == [0.75] * 5 and len(service.orchestrator.intake) == 0
        wait_for(lambda: _counter(client.get("/metrics").text, "wyneos_heartbeats_applied_total") == 5)
        report = service.tick()
        assert report.heartbeats_accepted == 5 and report.heartbeats_rejected == []
        assert {n.id: registry[n.id].status.value for n in nodes} == {n.id: "online" for n in nodes}
        text = client.get("/metrics").text
        assert _counter(text, "wyneos_heartbeats_applied_total") == 5  # counted once
        assert service.tick().heartbeats_accepted == 0  # taken once


def test_a_refusal_of_the_registry_between_ticks_is_reported_by_the_next_tick(tmp_path):
    """Applied without a running server (``apply`` directly): a heartbeat the registry
    refuses when applied (a node that left meanwhile) is in the next tick's report and
    counted once; the others are applied in order."""
    path = write_config(tmp_path, interval=3600, stale=7200, offline=9000)
    path.write_text(path.read_text().replace("unknown_nodes: reject}", "unknown_nodes: reject}\nnodes: [{id: a}, {id: b}]"))
    service = make_service(path)
    try:
        orch = service.orchestrator
        now = time.time()
        orch.intake.put_many([CheckedHeartbeat("a", now - 1, 0.5, {}), CheckedHeartbeat("gone", now, 0.5, {}),
                              CheckedHeartbeat("a", now, 0.25, {})])
        assert service.applier.apply() == 2 and len(orch.intake) == 0
        assert orch.registry["a"].load == 0.25 and orch.registry["a"].last_seen == now
        assert service.metrics.applied._value.get() == 2  # noqa: SLF001 - the counter's value
        assert service.metrics.registry_rejected._value.get() == 1  # noqa: SLF001
        report = service.tick()
        assert report.heartbeats_accepted == 2
        assert [r["node_id"] for r in report.heartbeats_rejected] == ["gone"]
        assert service.metrics.applied._value.get() == 2  # noqa: SLF001 - not counted again by the tick
        assert service.metrics.registry_rejected._value.get() == 1  # noqa: SLF001
        assert service.applier.apply() == 0  # nothing queued: nothing done
    finally:
        service.stop()
