"""Heartbeat observations reach the tick dictionary-encoded (``trust.observations.ObservationLog``):
the same observations, read the same way by the trust step and by consensus."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np

from wyneos_core.config import Config
from wyneos_core.consensus import ConsensusSettings, ConsensusState
from wyneos_core.model import Heartbeat, Observation
from wyneos_core.registry import Registry
from wyneos_core.trust.engine import Evidence, TrustEngine
from wyneos_core.trust.observations import HeartbeatObservations, ObservationLog, observations_of
from wyneos_core.trust.settings import TrustSettings

T0 = 1_000_000.0


def registry(**extra) -> Registry:
    return Registry({"stale_after": 15, "offline_after": 40, "max_clock_skew": 30, "unknown_nodes": "register",
                     "max_metadata_bytes": 4096, "max_load": 100, **extra})


def triples(batch) -> list[tuple[str, str, bool]]:
    ids = batch.ids
    return [(ids[a], ids[b], bool(r)) for a, b, r in
            zip(batch.observer.tolist(), batch.subject.tolist(), batch.reachable.tolist())]


def random_heartbeats(rng: random.Random, nodes: list[str], t: float, count: int) -> list[Heartbeat]:
    out = []
    for observer in rng.sample(nodes, count):
        seen = tuple(Observation(observer, rng.choice(nodes + ["ghost", "ghost-2"]), rng.random() > 0.3,
                                 signed=rng.random() > 0.5) for _ in range(rng.randint(0, 5)))
        out.append(Heartbeat(observer, t, 0.1, observations=seen))
    return out


def test_take_gives_the_accepted_observations_in_order_with_a_matching_batch():
    reg = registry()
    reg.accept(Heartbeat("a", T0, observations=(Observation("a", "b", True), Observation("a", "zz", False))), T0)
    reg.accept(Heartbeat("b", T0, observations=()), T0)
    reg.accept(Heartbeat("c", T0, observations=(Observation("c", "a", False),)), T0)
    taken = reg.take_observations()
    assert isinstance(taken, HeartbeatObservations)
    assert [(o.observer, o.subject, o.reachable) for o in taken] == [("a", "b", True), ("a", "zz", False),
                                                                      ("c", "a", False)]
    assert triples(taken.current_batch()) == [("a", "b", True), ("a", "zz", False), ("c", "a", False)]
    assert reg.take_observations() == []
    # the vocabulary is kept: next tick the same list, the same codes, new ids appended
    reg.accept(Heartbeat("b", T0 + 1, observations=(Observation("b", "a", True), Observation("b", "new", True))),
               T0 + 1)
    again = reg.take_observations()
    assert again.batch.ids is taken.batch.ids
    assert again.batch.subject.tolist() == [taken.codes["a"], len(taken.batch.ids) - 1]
    assert triples(again.batch) == [("b", "a", True), ("b", "new", True)]


def test_a_list_changed_after_the_take_is_read_item_by_item():
    reg = registry()
    reg.accept(Heartbeat("a", T0, observations=(Observation("a", "b", True),)), T0)
    taken = reg.take_observations()
    taken.append(Observation("b", "a", False))  # a plugin adding to ctx.observations
    assert taken.current_batch() is None
    ctx = SimpleNamespace(scratch={}, observations=taken)
    assert observations_of(ctx) is taken
    assert [o.subject for o in taken.relevant(())] == ["b", "a"]


def test_the_vocabulary_starts_over_past_its_bound():
    log = ObservationLog(max_ids=5)
    log.add("a", [Observation("a", f"s{i}", True) for i in range(6)])
    first = log.take()
    log.add("a", [Observation("a", "s1", False)])
    second = log.take()
    assert second.batch.ids is not first.batch.ids
    assert triples(second.batch) == [("a", "s1", False)]


def _engine_scores(observations, ids):
    section = Config.defaults()["trust"]
    engine = TrustEngine(TrustSettings.from_config(section))
    n = len(ids)
    out = []
    for tick, obs in enumerate(observations, 1):
        sc = engine.score(Evidence(tick, ids, np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int8),
                                   observations=obs))
        out.append((sc.peer.copy(), sc.combined.copy(), sc.observations_used, sc.observations_dropped))
    return out


def test_trust_step_reads_the_batch_exactly_as_the_objects():
    rng = random.Random(7)
    nodes = [f"n{i:02d}" for i in range(40)]
    reg = registry()
    for node in nodes:
        reg.register(node, now=T0)
    batches, plain = [], []
    for tick in range(1, 6):
        reg.accept_all(random_heartbeats(rng, nodes, T0 + tick, 30), T0 + tick)
        taken = reg.take_observations()
        ctx = SimpleNamespace(scratch={}, observations=taken)
        fast = observations_of(ctx)
        assert fast is taken.batch  # the step gets the batch, not the objects
        batches.append(fast)
        plain.append(list(taken))
    for (p1, c1, u1, d1), (p2, c2, u2, d2) in zip(_engine_scores(batches, nodes), _engine_scores(plain, nodes)):
        assert (u1, d1) == (u2, d2)
        assert u1 > 0 and d1 > 0  # some name ghosts or themselves
        np.testing.assert_allclose(p1, p2, rtol=0, atol=1e-12)
        np.testing.assert_allclose(c1, c2, rtol=0, atol=1e-12)


def test_batch_and_plugin_triples_are_read_together():
    reg = registry()
    reg.accept(Heartbeat("a", T0, observations=(Observation("a", "b", True),)), T0)
    reg.accept(Heartbeat("b", T0, observations=()), T0)
    taken = reg.take_observations()
    ctx = SimpleNamespace(scratch={"observations": [("b", "a", False)]}, observations=taken)
    both = observations_of(ctx)
    assert len(both) == 2
    engine = TrustEngine(TrustSettings.from_config(Config.defaults()["trust"]))
    sc = engine.score(Evidence(1, ["a", "b"], np.zeros(2, dtype=np.int8), np.zeros(2, dtype=np.int8),
                               observations=both))
    assert (sc.observations_used, sc.observations_dropped) == (2, 0)


def _consensus_state(observations, reg, silent_by_tick, require_signed):
    state = ConsensusState(ConsensusSettings(require_signed=require_signed))
    for tick, (obs, silent) in enumerate(zip(observations, silent_by_tick), 1):
        state.update(tick, T0 + tick, obs, reg, silent, 10.0)
    return ({s: dict(v.reports) for s, v in state.suspicions.items()}, state.early, state.contradictions,
            state._stats, state.discounted)


def test_consensus_bookkeeping_is_the_same_from_the_batch():
    rng = random.Random(3)
    nodes = [f"n{i:02d}" for i in range(30)]
    for require_signed in (False, True):
        reg = registry()
        for node in nodes:
            reg.register(node, now=T0)
        taken, silent_by_tick = [], []
        for tick in range(1, 8):
            reg.accept_all(random_heartbeats(rng, nodes, T0 + tick, 20), T0 + tick)
            taken.append(reg.take_observations())
            silent_by_tick.append({n: 1 for n in rng.sample(nodes, 4)})
        fast = _consensus_state(taken, reg, silent_by_tick, require_signed)
        slow = _consensus_state([list(t) for t in taken], reg, silent_by_tick, require_signed)
        assert fast == slow
        assert fast[0] and fast[2]  # suspects got reports, witnesses got records
