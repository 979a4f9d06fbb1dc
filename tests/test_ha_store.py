"""The state-store interface and its etcd backend, against a real 3-member etcd cluster."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ha_helpers import etcd_cluster
from wyneos_core.config import ConfigError, load_config
from wyneos_core.ha.etcd import EtcdClient, parse_store_url
from wyneos_core.ha.local import LocalEtcdCluster
from wyneos_core.ha.store import EtcdStateStore, FencedWrite
from wyneos_core.ha.values import Sealer
from wyneos_core.model import Action, ActionType, Severity
from wyneos_core.store import ClusterStateStore, StateStore, StoreError
from wyneos_core.tick import Orchestrator


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory):
    yield from etcd_cluster(tmp_path_factory)


_prefixes = iter(range(1_000_000))


@pytest.fixture
def store(etcd: LocalEtcdCluster):
    s = EtcdStateStore.open(etcd.endpoints, f"/test/{next(_prefixes)}/")
    s.sealer = make_sealer()
    yield s
    s.close()


def make_sealer() -> Sealer:
    """Signs enrolment data as the orchestrator key does (a key of the test's own)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    return Sealer(key.sign, [key.public_key().verify])




def lead(store: EtcdStateStore) -> int:
    """Take the leader key by hand (what the elector does) and arm the fence with it."""
    client = store.client
    lease, _ = client.grant(30)
    revision = client.put(store.fence.key, '{"id": "test"}', lease)
    store.fence.token = revision
    return revision


def test_both_backends_implement_the_interface(store: EtcdStateStore, tmp_path: Path) -> None:
    sqlite = StateStore.open(tmp_path / "s.db")
    assert isinstance(sqlite, ClusterStateStore)
    assert isinstance(store, ClusterStateStore)
    assert isinstance(sqlite.reopen(), ClusterStateStore)
    missing = [name for name in vars(StateStore) if not name.startswith("_") and callable(vars(StateStore)[name])
               and name not in ("open",) and not hasattr(store, name)]
    assert not missing, f"the etcd store lacks {missing}"


def test_decisions_round_trip_and_survive_a_new_orchestrator(store: EtcdStateStore, tmp_path: Path) -> None:
    lead(store)
    config = load_config(text="cluster: rt\nnodes: [{id: a}, {id: b}]\nplugins: {disable: [licence]}\n"
                              "report: {stdout: none, json_path: null}\n")

    class Isolate:
        __wyneos_name__ = "test-isolate"

        from wyneos_core import hookimpl

        @hookimpl
        def wyneos_enforcement(self, ctx, nodes):  # noqa: ANN001, ANN201
            return [Action(ActionType.DEGRADE, "a", "test", "test-isolate", Severity.WARNING)]

    orch = Orchestrator(config, plugins=[Isolate()], load_entrypoints=False, store=store)
    for _ in range(3):
        report = orch.tick()
        assert not report.errors, report.errors
    assert store.last_tick() == 3
    live = store.actions("in_force")
    assert [(a["type"], a["target"]) for a in live] == [("degrade", "a")]
    assert {e["state"] for e in store.action_events()} >= {"approved", "in_force"}
    assert [s["tick"] for s in store.tick_summaries(2)] == [3, 2]
    again = Orchestrator(config, plugins=[Isolate()], load_entrypoints=False, store=store.reopen())
    assert again.tick_number == 3
    assert again.tick().tick == 4
    assert [a["id"] for a in store.actions("in_force")] == [a["id"] for a in live]  # kept, not decided twice
    assert sum(1 for e in store.action_events() if e["state"] == "approved") == 1


def test_a_deposed_leaders_write_is_refused_and_changes_nothing(store: EtcdStateStore) -> None:
    token = lead(store)
    store.write_tick(1, time.time(), 1.0, {"tick": 1}, [], [], [], 100)
    # another term takes the key: the old token no longer matches its create revision
    store.client.txn([], [{"request_delete_range": {"key": __import__("base64").b64encode(
        store.fence.key.encode()).decode()}}])
    lease, _ = store.client.grant(30)
    store.client.put(store.fence.key, '{"id": "other"}', lease)
    assert store.fence.token == token
    row = {"id": "x1", "type": "degrade", "target": "a", "origin": "t", "reason": "r", "severity": "warning",
           "params": {}, "state": "in_force", "first_tick": 2, "last_tick": 2}
    with pytest.raises(FencedWrite):
        store.write_tick(2, time.time(), 1.0, {"tick": 2}, [], [row], [("x1", "approved", "")], 100)
    assert store.fence.refused == 1
    assert store.last_tick() == 1
    assert store.actions() == []
    with pytest.raises(FencedWrite):
        store.write_action_outcomes(2, [("x1", "a", True, "")], [], 100)
    store.fence.token = None
    with pytest.raises(FencedWrite, match="not the leader"):
        store.write_tick(2, time.time(), 1.0, {}, [], [], [], 100)


def test_an_enrolment_token_use_is_spent_once_across_replicas(store: EtcdStateStore) -> None:
    now = time.time()
    store.add_enrol_token("h1", None, 3, now + 60, now)
    results: list[str | None] = []
    lock = threading.Lock()

    def enrol(i: int) -> None:
        other = store.reopen()  # a replica of its own
        why = other.enrol_with_token("h1", f"n{i}", bytes([i]) * 32, f"fp{i}", time.time())
        with lock:
            results.append(why)

    threads = [threading.Thread(target=enrol, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count(None) == 3
    assert all(r == "the enrolment token is used up" for r in results if r is not None)
    assert store.enrol_tokens()[0]["uses_left"] == 0
    keys = store.node_keys()
    assert len(keys) == 3 and all(len(k["public_key"]) == 32 for k in keys)
    assert store.node_keys(max(k["seq"] for k in keys)) == []
    enrolled = keys[0]["node_id"]
    assert store.revoke_node_key(enrolled, time.time()) is True
    assert store.revoke_node_key(enrolled, time.time()) is False
    assert [k["node_id"] for k in store.node_keys(max(k["seq"] for k in keys))] == [enrolled]
    assert store.enrol_with_token("nope", "zz", b"z" * 32, "fp", now) == "unknown enrolment token"


def test_acknowledgements_and_meta(store: EtcdStateStore) -> None:
    store.record_action_ack("a/1", "n1", "applied", "x" * 900, 1.0)
    store.record_action_ack("a2", "n1", "failed", "", 2.0)
    assert store.action_acks_of("n1", ["a/1", "a2", "a3"]) == {"a/1", "a2"}
    assert [a["action_id"] for a in store.recent_action_acks(1)] == ["a2"]
    assert len(store.action_acks()[0]["detail"]) == 500
    assert store.prune_action_acks(100, 10) == 2
    store.set_meta("k", {"x": [1]})
    assert store.meta("k") == {"x": [1]} and store.meta("missing", 5) == 5


def test_bad_store_settings_are_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected etcd://"):
        parse_store_url("http://h:1")
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_store_url("etcd://h")
    assert parse_store_url("etcd://a:1,b:2") == [("a", 1), ("b", 2)]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cluster: x\nstate: {backend: etcd, etcd: {lease_duration: 5, renew_deadline: 6}}\n")
    with pytest.raises(ConfigError) as err:
        Orchestrator(load_config(cfg), load_entrypoints=False)
    assert "state.etcd.lease_duration" in str(err.value) and str(cfg) in str(err.value)


def test_unreachable_etcd_is_a_clear_error() -> None:
    from wyneos_core.ha.local import free_port

    with pytest.raises(StoreError, match="etcd does not answer"):
        EtcdStateStore.open([("127.0.0.1", free_port())], "/x/", timeout=0.5)


def test_member_list_is_tried_in_turn(etcd: LocalEtcdCluster) -> None:
    from wyneos_core.ha.local import free_port

    client = EtcdClient([("127.0.0.1", free_port()), *etcd.endpoints], timeout=1.0)
    client.put("/turn", "1")
    assert client.get("/turn").value == b"1"


def test_rule_states_carry_over_to_a_new_leader(store: EtcdStateStore, tmp_path: Path) -> None:
    """A rule pending for 2 of its 3 ticks fires on the new leader's first tick, not 3 later."""
    from wyneos_core.ha.carry import Carried

    (tmp_path / "slow.yaml").write_text(
        "ruleset: slow\nstage: enforcement\nrules:\n  - id: degrade-a\n    description: d\n"
        "    when: node.id == \"a\"\n    for: 2 ticks\n    severity: warning\n    message: m\n"
        "    then:\n      - degrade: {}\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cluster: carry\nnodes: [{id: a}]\nplugins: {disable: [licence]}\nrulesets: {paths: [slow.yaml]}\n"
                   "report: {stdout: none, json_path: null}\n")
    lead(store)
    first = Orchestrator(load_config(cfg), load_entrypoints=False, store=store)
    store.carry = Carried(first).collect
    assert [r.actions for r in (first.tick(), first.tick())] == [[], []]  # pending: ticks 1 and 2
    second_store = store.reopen()
    second = Orchestrator(load_config(cfg), load_entrypoints=False, store=second_store)
    second.start()
    assert Carried(second).restore(second_store.carried()) == ["rules/slow"]
    assert [a.type for a in second.tick().actions] == ["degrade"]  # tick 3: served its 2 ticks
    fresh = Orchestrator(load_config(cfg), load_entrypoints=False, store=False)
    assert [fresh.tick().actions for _ in range(2)] == [[], []]  # without the carried state: pending again


def test_a_replica_whose_write_is_fenced_counts_it_and_steps_down(etcd: LocalEtcdCluster, tmp_path: Path) -> None:
    """The leader key changes hands between two ticks while the elector still believes it
    leads (inside its renew deadline): the tick's write is refused, counted in /metrics,
    nothing of it is committed, and the replica stops deciding."""
    from ha_helpers import wait_for
    from wyneos_core.service.core import Service
    from wyneos_core.service.settings import ServiceSettings

    prefix = f"/test/{next(_prefixes)}/"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cluster: fence\nnodes: [{{id: a}}]\nplugins: {{disable: [licence]}}\n"
                   f"report: {{stdout: none, json_path: null}}\n"
                   f"state: {{backend: etcd, etcd: {{prefix: '{prefix}', lease_duration: 30, renew_deadline: 20, "
                   f"retry_period: 5, endpoints: [{', '.join(f'{h}:{p}' for h, p in etcd.endpoints)}]}}}}\n")
    config = load_config(cfg)
    service = Service(Orchestrator(config, load_entrypoints=False), ServiceSettings.from_config(config))
    try:
        service.ha.start()
        wait_for("leading", lambda: service.ha.leading, 10)
        assert service.tick().tick == 1 and service.tick().tick == 2
        client = service.ha.store.client
        key = service.ha.store.fence.key
        from wyneos_core.ha.etcd import delete_op

        client.txn([], [delete_op(key)])  # another term takes the key
        lease, _ = client.grant(30)
        client.put(key, '{"id": "usurper"}', lease)
        assert service.ha.leading  # it does not know yet
        report = service.tick()
        assert report is not None and any("FencedWrite" in e.error for e in report.errors)
        assert not service.ha.leading
        assert service.ha.store.last_tick() == 2
        assert "wyneos_fenced_writes_refused_total 1.0" in service.metrics.render().decode()
        assert service.tick() is None  # a follower now: no tick
    finally:
        service.stop()


def test_a_new_leader_gives_every_node_a_full_grace_period(etcd: LocalEtcdCluster, tmp_path: Path) -> None:
    """Node rows in etcd carry the heartbeat time of their last status change, long ago;
    a replica taking over counts every node it has heard from as seen now, so no node
    goes offline (nor gets isolated) because of the failover itself."""
    import json as _json

    from ha_helpers import wait_for
    from wyneos_core.service.core import Service
    from wyneos_core.service.settings import ServiceSettings

    prefix = f"/test/{next(_prefixes)}/"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cluster: grace\nnodes: [{{id: a}}, {{id: b}}]\nplugins: {{disable: [licence]}}\n"
                   f"rulesets: {{paths: ['builtin:healing']}}\n"
                   f"heartbeat: {{interval: 1, stale_after: 3, offline_after: 5}}\n"
                   f"report: {{stdout: none, json_path: null}}\n"
                   f"state: {{backend: etcd, etcd: {{prefix: '{prefix}', lease_duration: 30, renew_deadline: 20, "
                   f"retry_period: 5, endpoints: [{', '.join(f'{h}:{p}' for h, p in etcd.endpoints)}]}}}}\n")
    long_ago = time.time() - 600
    client = EtcdClient(etcd.endpoints)
    for node_id, seen in (("a", long_ago), ("b", None)):  # b: never heard from
        client.put(f"{prefix}nodes/{node_id}", _json.dumps({
            "id": node_id, "status": "online" if seen else "unknown", "last_seen": seen, "load": 0.1, "metadata": {},
            "licence_ref": None, "fingerprint": None, "registered_at": long_ago, "isolated": False,
            "updated_tick": 7}))
    client.put(f"{prefix}tick", "7")
    config = load_config(cfg)
    service = Service(Orchestrator(config, load_entrypoints=False), ServiceSettings.from_config(config))
    try:
        service.ha.start()
        wait_for("leading", lambda: service.ha.leading, 10)
        report = service.tick()
        assert report is not None and report.tick == 8  # carries on from etcd's tick number
        status = {n.id: n.status.value for n in report.nodes}
        assert status["a"] == "online"  # 600 s since its heartbeat, but the failover is no reason to drop it
        assert status["b"] == "offline"  # never heard from: no grace to give
        assert not [a for a in report.actions if a.target == "a"]
    finally:
        service.stop()


def test_a_node_enrolled_at_one_replica_is_known_at_another_without_a_new_token(
        etcd: LocalEtcdCluster, tmp_path: Path) -> None:
    from service_helpers import Node

    from wyneos_core.service.core import Service, hash_token
    from wyneos_core.service.identity import SignedItem
    from wyneos_core.service.settings import ServiceSettings

    prefix = f"/test/{next(_prefixes)}/"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cluster: enrol\nplugins: {{disable: [licence]}}\nreport: {{stdout: none, json_path: null}}\n"
                   f"state: {{backend: etcd, etcd: {{prefix: '{prefix}', "
                   f"endpoints: [{', '.join(f'{h}:{p}' for h, p in etcd.endpoints)}]}}}}\n")
    config = load_config(cfg)
    one, two = (Service(Orchestrator(load_config(cfg), load_entrypoints=False), ServiceSettings.from_config(config))
                for _ in range(2))
    try:
        one.db.add_enrol_token(hash_token("wyn_t"), None, 1, time.time() + 60, time.time(), customer="acme")
        node = Node("moving")
        status, _ = one.enrol(SignedItem.from_headers(*reversed(node.enrol_request("wyn_t"))))
        assert status == 201
        # the other replica has not looked at etcd since; the token is used up
        status, answer = two.enrol(SignedItem.from_headers(*reversed(node.enrol_request("wyn_t"))))
        assert status == 200 and answer["enrolled"] is False
        assert "moving" in two.orchestrator.registry
        assert two.db.node_customers() == {"moving": "acme"}
        assert one.orchestrator.registry.get("moving").metadata.get("customer") == "acme"
    finally:
        one.stop()
        two.stop()


def test_signed_acks_refusals_and_issuance_times(store: EtcdStateStore) -> None:
    store.ensure_signing_tables()
    store.record_action_ack("a1", "n1", "applied", "", 1.0)
    store.put_signed_ack("a1", "n1", 1000, {"sig": "x"}, 1.0)
    store.put_signed_ack("a2", "n1", 2000, {"sig": "y"}, 2.0)  # its plain ack is gone
    assert store.signed_ack("a1", "n1") == {"sig": "x"}
    store.prune_signed_acks()
    assert store.signed_ack("a1", "n1") == {"sig": "x"} and store.signed_ack("a2", "n1") is None
    store.add_action_refusals("n1", 5.0, [("expired", "a1", "late"), ("unsigned", None, "")], keep=3)
    store.add_action_refusals("n2", 6.0, [("replayed", "a2", "again"), ("bad_signature", "a3", "")], keep=3)
    assert [r["reason"] for r in store.recent_action_refusals(10)] == ["unsigned", "replayed", "bad_signature"]
    assert [r["node_id"] for r in store.recent_action_refusals(1)] == ["n2"]
    # issuance times: from the tick row, and from the action itself once the row is gone
    lead(store)
    row = {"id": "x1", "type": "degrade", "target": "a", "origin": "t", "reason": "r", "severity": "warning",
           "params": {}, "state": "in_force", "first_tick": 1, "last_tick": 1}
    store.write_tick(1, 1234.5, 1.0, {"tick": 1}, [], [row], [("x1", "approved", "")], 100)
    assert store.tick_times([1, 2]) == {1: 1234.5}
    store.write_tick(2, 1300.0, 1.0, {"tick": 2}, [], [{**row, "last_tick": 2}], [], 1)  # retention 1: row 1 gone
    assert store.tick_rows()[0]["tick"] == 2
    assert store.tick_times([1]) == {1: 1234.5}
