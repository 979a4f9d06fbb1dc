"""The tick of ``wyneos serve`` grows with what changed, not with the fleet: its
neighbour lists are made when a node asks (tests/test_mesh_service.py), a level's hops
reach the agent outboxes in one call, and the published view makes a node only when
a reader asks for it. Each must give what the per-node way gave."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
from service_helpers import make_service

from wyneos_core import hookimpl
from wyneos_core.builtin.carry import HopBatch
from wyneos_core.licensing.keys import generate_key, public_bytes
from wyneos_core.model import ORIGIN, Action, NodeStatus
from wyneos_core.service.view import NodeMap

CONFIG = """\
cluster: hops
tick: {interval: 1}
heartbeat: {interval: 1, stale_after: 5, offline_after: 10, max_clock_skew: 30}
mesh: {topology: ring, origin_links: 2, seed: 1}
plugins: {disable: [licence], settings: {service: {port: 0}}}
state: {path: state.db}
report: {json_path: null, stdout: none}
nodes:
""" + "\n".join(f"  - {{id: n0{i}}}" for i in range(1, 7)) + "\n"

AGENTS = ("n01", "n02", "n03", "n04", "n05")  # n06 has no agent


def _service(tmp_path, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.yaml").write_text(CONFIG)
    service = make_service(tmp_path / name / "config.yaml")
    for node_id in AGENTS:
        service.keys.set(node_id, public_bytes(generate_key()))
    service.orchestrator.registry["n03"].status = NodeStatus.OFFLINE  # silent: reached through a witness
    return service


def _hops(orch, plan):
    actions = [Action("quarantine", "n03", "test", "test"), Action("reduce_load", "n01", "hot", "healing")]
    names = orch.mesh.vertices()
    number = {v: i for i, v in enumerate(names)}
    return HopBatch(actions, np.array([a for a, _, _ in plan]), np.array([number[s] for _, s, _ in plan]),
                    np.array([number[r] for _, _, r in plan]), names, 1, 0)


def test_a_levels_hops_in_one_call_queue_and_note_what_hop_by_hop_did(tmp_path):
    plan = [(0, ORIGIN, "n02"), (0, "n02", "n03"), (0, "n04", "n03"), (1, ORIGIN, "n01"), (1, "n01", "n06"),
            (1, "n01", "n02")]
    one, each = _service(tmp_path, "batch"), _service(tmp_path, "hop")
    try:
        results = []
        for service in (one, each):
            orch = service.orchestrator
            assert orch.mesh.vertices()[0] == ORIGIN
            hops = _hops(orch, plan)
            ctx = SimpleNamespace(tick=7, now=1_700_000_000.0, registry=orch.registry, orchestrator=orch,
                                  report=SimpleNamespace(errors=[]))
            if service is one:
                assert service.outbox.wyneos_deliver_batch(ctx=ctx, hops=hops) is True
            else:
                for action, sender, receiver in hops:
                    orch.pm.call_each("wyneos_deliver", ctx.report.errors, firstresult=True, ctx=ctx, action=action,
                                      sender=sender, receiver=receiver)
                assert ctx.report.errors == []
            results.append(({n: service.outbox.pending(n) for n in ("n01", "n02", "n03", "n06")},
                            dict(service.relay_desk.preferred)))
        assert results[0] == results[1]
        queued, preferred = results[0]
        assert [a["id"] for a in queued["n02"]] == [a.id for a in _hops(one.orchestrator, plan).actions]
        assert queued["n06"] == [] and queued["n03"][0]["issued_at"] == 1_700_000_000_000
        # the witness the tree chose last for the silent node, as hop by hop
        assert preferred == {("n03", _hops(one.orchestrator, plan).actions[0].id): "n04"}
    finally:
        one.stop()
        each.stop()


def test_another_hop_transport_gets_every_hop_as_before(tmp_path):
    class Bus:
        def __init__(self):
            self.hops = []

        @hookimpl(tryfirst=True)
        def wyneos_deliver(self, ctx, action, sender, receiver):
            self.hops.append((sender, receiver))

    service = _service(tmp_path, "bus")
    try:
        bus = Bus()
        orch = service.orchestrator
        orch.pm.register(bus, "bus")
        ctx = SimpleNamespace(tick=7, now=time.time(), registry=orch.registry, orchestrator=orch)
        assert service.outbox.wyneos_deliver_batch(ctx=ctx, hops=_hops(orch, [(0, ORIGIN, "n02")])) is None
        assert service.outbox.pending("n02") == [] and bus.hops == []
    finally:
        service.stop()


def test_the_published_view_reads_like_the_dict_it_was(tmp_path):
    service = _service(tmp_path, "view")
    try:
        report = service.tick_now()
        view = service.view
        assert isinstance(view.nodes, NodeMap) and view.nodes.values() is report.nodes  # nothing made per node
        plain = {n.id: n for n in report.nodes}
        assert len(view.nodes) == len(plain) and list(view.nodes) == list(plain)
        assert dict(view.nodes.items()) == plain and list(view.nodes.values()) == list(plain.values())
        assert view.nodes.get("n03") == plain["n03"] and "n03" in view.nodes and view.nodes.get("nope") is None
        assert "nope" not in view.nodes and view.nodes["n01"].status is plain["n01"].status
        # what the tick changes afterwards is not in the published view
        service.orchestrator.registry["n01"].load = 0.99
        assert view.nodes["n01"].load != 0.99
        # an enrolment publishes a fresh view without a tick: the columns copied now
        service.publish_view()
        assert service.view.nodes["n01"].load == 0.99 and service.view.report is report
        assert NodeMap([plain["n02"]])["n02"] == plain["n02"]
    finally:
        service.stop()
