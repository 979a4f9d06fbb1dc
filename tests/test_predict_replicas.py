"""Detector columns on replicas: kept in etcd in checked chunks, read back by a new
leader, refused from a deposed one (issue 20 item 1). A real etcd cluster on loopback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from ha_helpers import etcd_cluster

from wyneos_core import hookimpl
from wyneos_core.builtin.predict import telemetry_of
from wyneos_core.config import load_config
from wyneos_core.ha.etcd import put_op
from wyneos_core.ha.local import LocalEtcdCluster
from wyneos_core.ha.store import EtcdStateStore, FencedWrite
from wyneos_core.model import Heartbeat
from wyneos_core.predict.telemetry import FleetPredictions
from wyneos_core.tick import Orchestrator


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory):
    yield from etcd_cluster(tmp_path_factory)


_prefixes = iter(range(1_000_000))


@pytest.fixture
def store(etcd: LocalEtcdCluster):
    s = EtcdStateStore.open(etcd.endpoints, f"/predict/{next(_prefixes)}/")
    yield s
    s.close()


def lead(store: EtcdStateStore) -> int:
    """Take the leader key by hand (what the elector does) and arm the fence with it."""
    lease, _ = store.client.grant(30)
    revision = store.client.put(store.fence.key, '{"id": "test"}', lease)
    store.fence.token = revision
    return revision


def test_a_blob_round_trips_in_chunks_and_the_old_one_goes(store: EtcdStateStore) -> None:
    lead(store)
    assert store.blob("telemetry") is None
    big = hashlib.sha256(b"x").digest() * 50_000  # 1.6 MB: four chunks
    store.put_blob("telemetry", big)
    assert store.blob("telemetry") == big
    store.put_blob("telemetry", b"small")
    assert store.blob("telemetry") == b"small"
    left = store.client.get_prefix(store._k("blobs", "telemetry") + "/")
    assert len(left) == 1  # the four chunks of the first generation were deleted


def test_a_damaged_chunk_is_not_used(store: EtcdStateStore) -> None:
    lead(store)
    store.put_blob("telemetry", b"a" * 700_000)
    head = store.meta("blob:telemetry")
    key = store._k("blobs", "telemetry", str(head["generation"]), "00000001")
    store.client.txn([], [put_op(key, b"b" * 10)])  # someone with etcd access changed a chunk
    assert store.blob("telemetry") is None


def test_a_deposed_leader_cannot_write_the_columns(store: EtcdStateStore) -> None:
    lead(store)
    store.put_blob("telemetry", b"first")
    store.fence.token = 1  # another replica leads now: this one's token is stale
    with pytest.raises(FencedWrite):
        store.put_blob("telemetry", b"second")
    lead(store)
    assert store.blob("telemetry") == b"first"


class Feed:
    @hookimpl
    def wyneos_heartbeat(self, ctx):
        return [Heartbeat("a", ctx.now, metrics={"load1": 0.5 + 0.01 * (ctx.tick % 4)})]


def test_a_new_leader_goes_on_with_the_columns_of_the_last(store: EtcdStateStore, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cluster: p\nnodes: [{id: a}]\nplugins: {disable: [licence]}\n"
                   "report: {stdout: none, json_path: null}\n"
                   "telemetry: {metrics: [{name: load1, min: 0, max: 64}], save_every: 3}\n")
    now = [1_700_000_000.0]

    def clock() -> float:
        now[0] += 10.0
        return now[0]

    lead(store)
    first = Orchestrator(load_config(cfg), load_entrypoints=False, store=store, clock=clock, plugins=[Feed()])
    for _ in range(6):  # saved at ticks 3 and 6
        first.tick()
    saved = FleetPredictions(telemetry_of(first), now[0]).evidence("a", "load1")
    second_store = store.reopen()
    second = Orchestrator(load_config(cfg), load_entrypoints=False, store=second_store, clock=clock,
                          plugins=[Feed()])
    restored = FleetPredictions(telemetry_of(second), now[0]).evidence("a", "load1")
    assert restored["samples"] == saved["samples"] == 6
    assert restored["recent"] == saved["recent"]
