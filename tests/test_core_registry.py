from __future__ import annotations

import math

import pytest

from wyneos_core.config import Config
from wyneos_core.model import Heartbeat, NodeStatus
from wyneos_core.registry import HeartbeatError, Registry, RegistryError

NOW = 1_700_000_000.0


def registry(**overrides) -> Registry:
    settings = dict(Config.defaults()["heartbeat"])
    settings.update(overrides)
    r = Registry(settings)
    r.register("a", now=NOW)
    return r


def test_defaults_follow_the_documented_rhythm():
    hb = Config.defaults()["heartbeat"]
    assert hb["interval"] == 6.0 and hb["stale_after"] == 18.0 and hb["offline_after"] == 48.0


@pytest.mark.parametrize(
    "hb, field, reason",
    [
        (Heartbeat("zzz", NOW), "node_id", "unknown node"),
        (Heartbeat("bad id!", NOW), "node_id", "not a valid node id"),
        (Heartbeat("a", NOW, load="high"), "load", "not a number"),
        (Heartbeat("a", NOW, load=True), "load", "not a number"),
        (Heartbeat("a", NOW, load=-0.1), "load", "out of range"),
        (Heartbeat("a", NOW, load=math.nan), "load", "out of range"),
        (Heartbeat("a", NOW, load=1e9), "load", "out of range"),
        (Heartbeat("a", NOW + 31), "timestamp", "in the future"),
        (Heartbeat("a", math.inf), "timestamp", "not a finite number"),
        (Heartbeat("a", "yesterday"), "timestamp", "not a finite number"),
        (Heartbeat("a", NOW, metadata={"blob": "x" * 9000}), "metadata", "more than 8192"),
        (Heartbeat("a", NOW, metadata=["x"]), "metadata", "not a mapping"),
        (Heartbeat("a", NOW, metadata={"x": object()}), "metadata", "not JSON data"),
        (Heartbeat("a", NOW, fingerprint="f" * 300), "fingerprint", "at most 256"),
    ],
)
def test_malformed_heartbeats_are_refused_naming_the_field(hb, field, reason):
    r = registry()
    before = r["a"].to_dict()
    with pytest.raises(HeartbeatError) as info:
        r.accept(hb, NOW)
    assert info.value.field == field
    assert reason in info.value.reason
    assert r["a"].to_dict() == before, "a refused heartbeat must not change the registry"
    assert len(r) == 1


def test_unknown_nodes_can_be_registered_by_policy():
    r = registry(unknown_nodes="register")
    r.accept(Heartbeat("new-node", NOW, 0.5, {"zone": "b"}), NOW)
    assert r["new-node"].load == 0.5 and r["new-node"].metadata == {"zone": "b"}


def test_clock_rollback_is_refused_and_remembered():
    r = registry()
    r.accept(Heartbeat("a", NOW), NOW)
    with pytest.raises(HeartbeatError, match="clock rollback"):
        r.accept(Heartbeat("a", NOW - 3600), NOW + 1)
    assert r["a"].last_rollback == NOW + 1
    assert r["a"].last_seen == NOW


def test_late_duplicate_within_skew_changes_nothing():
    r = registry()
    r.accept(Heartbeat("a", NOW, 0.2), NOW)
    r.accept(Heartbeat("a", NOW - 5, 0.9), NOW)
    assert r["a"].load == 0.2 and r["a"].last_seen == NOW


def test_status_follows_heartbeat_age():
    r = registry()
    assert r.refresh(NOW) == {}  # unknown until the grace period passes
    assert r["a"].status is NodeStatus.UNKNOWN
    r.accept(Heartbeat("a", NOW), NOW)
    assert r.refresh(NOW + 1) == {"a": (NodeStatus.UNKNOWN, NodeStatus.ONLINE)}
    assert r.refresh(NOW + 18) == {}
    assert r.refresh(NOW + 18.5) == {"a": (NodeStatus.ONLINE, NodeStatus.STALE)}
    assert r.refresh(NOW + 48.5) == {"a": (NodeStatus.STALE, NodeStatus.OFFLINE)}
    r.accept(Heartbeat("a", NOW + 50), NOW + 50)
    assert r.refresh(NOW + 50) == {"a": (NodeStatus.OFFLINE, NodeStatus.ONLINE)}
    assert r.status_of(r["a"], NOW + 100) is NodeStatus.OFFLINE


def test_never_seen_node_goes_offline_after_grace():
    r = registry()
    r.refresh(NOW + 49)
    assert r["a"].status is NodeStatus.OFFLINE


def test_register_refuses_bad_and_duplicate_ids():
    r = registry()
    with pytest.raises(RegistryError, match="already registered"):
        r.register("a", now=NOW)
    with pytest.raises(RegistryError, match="not valid"):
        r.register("../etc", now=NOW)
    r.deregister("a")
    with pytest.raises(RegistryError, match="not registered"):
        r.deregister("a")


def test_a_batch_is_applied_exactly_as_one_heartbeat_at_a_time():
    """``accept_all`` checks the common heartbeat inline: the same outcome as ``accept``
    one by one, on hostile values, duplicates, reordering and clock rollbacks."""
    import random

    from wyneos_core.intake import CheckedHeartbeat

    def fresh() -> Registry:
        r = registry(unknown_nodes="reject")
        r.register("b", now=NOW)
        r.register("c", now=NOW)
        return r

    rng = random.Random(5)
    ids = ["a", "b", "c", "gone", ["x"], "bad id!"]
    loads = [None, 0.0, 0.5, 1e9, -1.0, math.nan, math.inf, 3, True, "1"]
    stamps = [NOW, NOW - 5, NOW - 100, NOW + 10, NOW + 31, math.nan, -math.inf, math.inf, int(NOW), "t"]
    batch = []
    for _ in range(600):
        cls = rng.choice([Heartbeat, CheckedHeartbeat])
        extra = rng.choice([{}, {"metadata": {"zone": "eu"}}, {"metadata": None}, {"fingerprint": "fp"},
                            {"licence_ref": "l1"}, {}, {}])
        stamp = rng.choice(stamps)
        if type(stamp) is float and rng.random() < 0.5:
            stamp += rng.uniform(-40, 5)
        hb = cls(rng.choice(ids), stamp, rng.choice(loads), **extra)
        if cls is CheckedHeartbeat:  # the intake makes one only of a heartbeat that passed its check
            try:
                fresh().check(hb, NOW)
            except HeartbeatError:
                hb = Heartbeat(hb.node_id, hb.timestamp, hb.load, **extra)
        batch.append(hb)

    together, alone = fresh(), fresh()
    accepted, rejected = together.accept_all(batch, NOW, trusted=True)
    one_by_one: list[dict] = []
    count = 0
    for hb in batch:
        try:
            alone.accept(hb, NOW, checked=type(hb) is CheckedHeartbeat)
            count += 1
        except HeartbeatError as exc:
            one_by_one.append(exc.to_dict())
    assert accepted == count and [e.to_dict() for e in rejected] == one_by_one
    assert [n.to_dict() | {"rollback": n.last_rollback} for n in together] == \
        [n.to_dict() | {"rollback": n.last_rollback} for n in alone]


def test_a_batch_of_the_common_shape_is_applied_as_one_at_a_time():
    """The whole-batch path (every heartbeat of the common shape), duplicates, reordering,
    rollbacks, future stamps and loads out of range included."""
    import random

    rng = random.Random(11)
    ids = ["a", "b", "c", "d", "zzz"]

    def fresh() -> Registry:
        r = registry()
        for node_id in ("b", "c", "d"):
            r.register(node_id, now=NOW)
        r.accept(Heartbeat("d", NOW - 2.0, 0.5), NOW)
        return r

    batch = [Heartbeat(rng.choice(ids), NOW + rng.uniform(-60.0, 40.0), rng.choice([None, 0.1, 0.7, 99.0, -0.5]))
             for _ in range(400)]
    together, alone = fresh(), fresh()
    accepted, rejected = together.accept_all(batch, NOW)
    errors, count = [], 0
    for hb in batch:
        try:
            alone.accept(hb, NOW)
            count += 1
        except HeartbeatError as exc:
            errors.append(exc.to_dict())
    assert accepted == count and sorted(map(str, (e.to_dict() for e in rejected))) == sorted(map(str, errors))
    assert [n.to_dict() | {"rollback": n.last_rollback} for n in together] == \
        [n.to_dict() | {"rollback": n.last_rollback} for n in alone]
