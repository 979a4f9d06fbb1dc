"""Overrides and exceptions kept in the etcd store (replicas) act like those in SQLite."""

from __future__ import annotations

import pytest
from ha_helpers import etcd_cluster

from tests.conftest import beat, cluster_yaml, config_from
from wyneos_core.enforcement.exceptions import PolicyException, store_all, stored
from wyneos_core.enforcement.overrides import set_override
from wyneos_core.ha.store import EtcdStateStore
from wyneos_core.tick import Orchestrator


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    yield from etcd_cluster(tmp_path_factory, 1)


def test_an_override_and_an_exception_in_etcd_act_on_the_next_tick(etcd, clock):
    store = EtcdStateStore.open(etcd.endpoints, "/enforcement-test/")
    try:
        lease, _ = store.client.grant(30)  # lead, as the elector would
        store.fence.token = store.client.put(store.fence.key, '{"id": "test"}', lease)
        set_override(store, "n01", "isolate", "stolen laptop", "dave")
        store_all(store, [PolicyException.parse({"id": "keep-n02", "owner": "ops", "reason": "r", "node": "n02",
                                                 "expires": "2099-01-01T00:00:00Z"})])
        assert [e.id for e in stored(store)] == ["keep-n02"]
        config = config_from(cluster_yaml(3, topology="star"))
        orch = Orchestrator(config, clock=clock, load_entrypoints=False, store=store)
        beat(orch, clock, "n01", "n02", "n03")
        report = orch.tick()
        assert orch.registry.get("n01").isolated
        assert report.enforcement["overrides"][0]["by"] == "dave"
        assert report.to_dict()["enforcement"]["overrides"][0]["reason"] == "stolen laptop"
    finally:
        store.close()
