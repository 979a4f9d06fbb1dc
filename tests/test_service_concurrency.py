"""A slow tick never holds up the API: while a tick is stuck in a plugin, /healthz,
heartbeat intake and every read endpoint answer at once (readers use the snapshot
published after each tick); an enrolment waits for the tick in a worker thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from service_helpers import Node, add_token, make_service, write_config

from wyneos_core import hookimpl
from wyneos_core.service.server import ServerThread



class Gate:
    """Test plugin: once armed, the enforcement step waits until released (a slow tick)."""

    __wyneos_name__ = "test-gate"

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        #: set once the held tick goes on: every answer before it came while the tick was stuck
        self.passed = threading.Event()

    @hookimpl
    def wyneos_enforcement(self, ctx: Any) -> list:
        if self.armed:
            self.entered.set()
            self.release.wait(120)
            self.passed.set()
        return []


def during_tick(gate: Gate, call) -> tuple[bool, httpx.Response]:
    """The answer of ``call`` and whether it came while the gate still held the tick."""
    response = call()
    return not gate.passed.is_set(), response


def test_a_slow_tick_blocks_neither_intake_nor_readers(tmp_path):
    gate = Gate()
    service = make_service(write_config(tmp_path, interval=0.1, stale=30, offline=60), plugins=(gate,))
    node, late = Node("fast-1"), Node("late-1")
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=30) as client:
        body, headers = node.enrol_request(add_token(service))
        assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        late_token = add_token(service)
        gate.armed = True
        assert gate.entered.wait(10), "the tick never reached the gate"
        tick_while_blocked = client.get("/healthz").json()["tick"]
        # a reader polls every read endpoint, as the dashboard does, on its own connection
        reads: list[tuple[str, float, int]] = []
        stop = threading.Event()

        def reader() -> None:
            with httpx.Client(base_url=url, timeout=30) as r:
                while not stop.is_set():
                    for path in ("/v1/nodes", "/v1/mesh", "/v1/ticks/latest", "/v1/actions", "/v1/nodes/fast-1",
                                 "/metrics"):
                        held, response = during_tick(gate, lambda: r.get(path))
                        reads.append((path, held, response.status_code))

        enrolled: list[httpx.Response] = []

        def enrol_late() -> None:
            b, h = late.enrol_request(late_token)
            with httpx.Client(base_url=url, timeout=30) as e:
                enrolled.append(e.post("/v1/enrol", content=b, headers=h))

        threads = [threading.Thread(target=reader), threading.Thread(target=enrol_late)]
        for t in threads:
            t.start()
        try:
            for _ in range(10):
                held, response = during_tick(gate, lambda: client.get("/healthz"))
                assert response.status_code == 200 and held
                b, h = node.heartbeat(load=0.25)
                held, response = during_tick(gate, lambda: client.post("/v1/heartbeats", content=b, headers=h))
                assert response.status_code == 202 and held, response.text
                time.sleep(0.05)
            assert client.get("/healthz").json()["tick"] == tick_while_blocked  # still the same stuck tick
            assert not enrolled  # enrolment changes the registry: it waits for the tick, off the event loop
        finally:
            stop.set()
            threads[0].join(10)
            gate.armed = False
            gate.release.set()
            threads[1].join(20)
        assert {path for path, _, _ in reads} >= {"/v1/nodes", "/v1/mesh", "/v1/ticks/latest", "/v1/actions"}
        assert all(status == 200 for _, _, status in reads), reads
        # every read was answered while the tick was still held in the gate (it waits until released)
        assert all(held for _, held, _ in reads), [r for r in reads if not r[1]][:3]
        assert enrolled and enrolled[0].status_code == 201, enrolled
        # after the slow tick everything carries on: the heartbeats sent meanwhile reached the registry
        deadline = time.monotonic() + 10
        while client.get("/v1/nodes/fast-1").json()["load"] != 0.25:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/v1/nodes/late-1").status_code == 200
