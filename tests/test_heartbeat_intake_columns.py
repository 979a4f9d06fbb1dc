"""The session intake's column path: a batch of usual session heartbeats is queued as one
``HeartbeatColumns`` batch, and every answer (accepted, refused, the status, code, reason
and field of each refusal) and the registry after the tick are what the same batch gets
item by item as ``CheckedHeartbeat`` objects, on random batches with hostile items. And the
queue hands objects and column batches to the tick in the order they came."""

from __future__ import annotations

import json
import math
import random
import time

import pytest
from service_helpers import Node, make_service, write_config

from wyneos_core.intake import HeartbeatColumns, HeartbeatQueue
from wyneos_core.licensing.keys import public_bytes
from wyneos_core.model import Heartbeat
from wyneos_core.registry import Registry
from wyneos_core.config import Config
from wyneos_core.service import session_intake
from wyneos_core.service.heartbeat_api import HeartbeatAPI
from wyneos_core.service.sessions import mac

IDS = [f"c-{i:02d}" for i in range(12)]


def twin(tmp_path, name: str, columns: bool):
    folder = tmp_path / name
    folder.mkdir()
    service = make_service(write_config(folder, interval=0.2, stale=5, offline=10), heartbeat_burst=8,
                           heartbeat_rate=1)
    now = time.time()
    for node_id in IDS:
        service.keys.set(node_id, public_bytes(Node(node_id).key))
    for i, node_id in enumerate(IDS[:-1]):  # the last one is enrolled, not registered
        # the others' key fingerprints: half of them known to the registry already
        service.orchestrator.registry.register(node_id, now=now,
                                               fingerprint=service.keys.fingerprint(node_id) if i % 2 else None)
    api = HeartbeatAPI(service)
    if not columns:
        api.intake._as_columns = lambda items, now: None  # noqa: SLF001 - the item-by-item path, for comparison
    return service, api


def body(rng: random.Random, now: float, node_id: str, clean: bool) -> bytes:
    if clean:
        return json.dumps({"timestamp": now - rng.random(), "load": rng.choice([0.5, None, 3.0]),
                           **({"metadata": {"sim": True}} if rng.random() < 0.5 else {})}).encode()
    ts = rng.choice([now, now - 1, now + 0.5, now + 1e4, now - 1e4, 1e400, -1e400, None])
    load = rng.choice([0.5, 0.0, 3.25, None, -1.0, 1e9, 1e400, "x", True])
    data: dict = {"load": load}
    if ts is not None:
        data["timestamp"] = ts
    extra = rng.random()
    if extra < 0.5:
        data["metadata"] = {"sim": True}
    elif extra < 0.55:
        data["metadata"] = {"sim": 1}
    elif extra < 0.6:
        data["metadata"] = {"restrictions": ["x"]}
    elif extra < 0.63:
        data["metrics"] = {"nope": 1.0}
    elif extra < 0.66:
        data["node_id"] = rng.choice([node_id, "c-00"])
    elif extra < 0.69:
        data["licence_ref"] = "lic-1"
    elif extra < 0.71:
        data["surprise"] = 1
    text = json.dumps(data).replace("Infinity", "1e400")
    return text.encode() if rng.random() > 0.02 else b"{not json"


@pytest.mark.parametrize("few", [0, 8], ids=["columns", "few-as-objects"])
@pytest.mark.parametrize("seed", range(5))
def test_a_batch_gets_the_same_answers_and_registry_as_item_by_item(tmp_path, monkeypatch, seed, few):
    """``few``: batches of up to this many are checked on Python floats and queued as objects."""
    monkeypatch.setattr(session_intake, "_FEW", few)
    rng = random.Random(seed)
    twins = [twin(tmp_path, "columns", True), twin(tmp_path, "objects", False)]
    taken = []
    intake = twins[0][1].intake
    as_columns = intake._as_columns  # noqa: SLF001
    intake._as_columns = lambda items, now: taken.append(as_columns(items, now)) or taken[-1]  # noqa: SLF001
    keys = {node_id: bytes([i + 1] * 32) for i, node_id in enumerate(IDS)}
    expires = time.time() + 600
    sids = [{n: service.sessions.issue_ticket(n, keys[n], expires) for n in IDS} for service, _ in twins]
    seqs = {n: 0 for n in IDS}
    column_batches = 0
    for _ in range(20):
        now = time.time()
        plan = []
        clean = rng.random() < 0.5
        for _ in range(rng.choice([1, 1, 2, 3, 10, 20])):
            node_id = rng.choice(IDS[:-1] if clean else IDS)
            if clean or rng.random() < 0.8 or not seqs[node_id]:
                seqs[node_id] += 1
            seq = seqs[node_id]
            raw = body(rng, now, node_id, clean or rng.random() < 0.7)
            tag = mac(keys[node_id], seq, raw) if clean or rng.random() > 0.05 else "00" * 16
            plan.append((node_id, seq, tag, raw, clean or rng.random() > 0.02))
        if rng.random() < 0.5:  # a batch of distinct nodes, the usual shape
            plan = sorted({p[0]: p for p in plan}.values(), key=lambda p: p[1])
        answers = []
        for (service, api), sid_of in zip(twins, sids):
            items = [(i, sid_of[n] if known else "nope", seq, tag, raw)
                     for i, (n, seq, tag, raw, known) in enumerate(plan)]
            refused, accepted = api.accept_session(items, now)
            drained = service.orchestrator.intake.drain()
            column_batches += len(drained.columns) if service is twins[0][0] else 0
            service.orchestrator.intake.put_many(drained)
            for batch in drained.columns:
                service.orchestrator.intake.put_columns(batch)
            service.orchestrator.tick()
            answers.append(({i: r.to_dict() for i, r in refused.items()}, [i for i, _ in accepted]))
        assert answers[0] == answers[1]
        states = [[(v.id, v.last_seen, v.load, v.metadata, v.last_rollback is None) for v in service.orchestrator.registry]
                  for service, _ in twins]
        assert len(states[0]) == len(states[1])
        for a, b in zip(*states):
            assert all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)) for x, y in zip(a, b)), \
                (a, b)
    assert any(t is not None for t in taken)  # the quick path was taken
    assert column_batches or few


def test_the_usual_batch_is_queued_as_columns(tmp_path):
    service, api = twin(tmp_path, "usual", True)
    for node_id in IDS[:10]:  # the key fingerprints known: nothing to set
        service.orchestrator.registry.get(node_id).fingerprint = service.keys.fingerprint(node_id)
    key = bytes(32)
    now = time.time()
    items = []
    for i, node_id in enumerate(IDS[:10]):
        sid = service.sessions.issue_ticket(node_id, key, now + 600)
        raw = json.dumps({"timestamp": now, "load": 0.25 * i}).encode()
        items.append((i, sid, 1, mac(key, 1, raw), raw))
    refused, accepted = api.accept_session(items, now)
    assert not refused and len(accepted) == 10
    drained = service.orchestrator.intake.drain()
    assert list(drained) == [] and len(drained.columns) == 1 and drained.columns[0].node_ids == IDS[:10]
    assert drained.columns[0].load.tolist() == [0.25 * i for i in range(10)]


def test_objects_and_column_batches_are_applied_in_the_order_they_were_queued():
    """A column batch queued before a heartbeat object of the same node is applied first: the
    newer object wins, and the older batch is no clock rollback."""
    reg = Registry({**Config.defaults()["heartbeat"], "max_clock_skew": 30})
    reg.register("a", now=0.0)
    queue = HeartbeatQueue()
    queue.put_columns(HeartbeatColumns(["a"], [100.0], [0.5]))
    queue.put_many([Heartbeat("a", 200.0, 0.75, {"k": "v"})])
    queue.put_columns(HeartbeatColumns(["a"], [201.0], [0.25]))
    drained = queue.drain()
    assert drained.marks == [0, 1]
    accepted, rejected = reg.accept_all(drained, 300.0)
    assert (accepted, rejected) == (3, [])
    node = reg.get("a")
    assert node.last_seen == 201.0 and node.load == 0.25 and node.metadata == {"k": "v"}
    assert node.last_rollback is None
