"""The trust step: EigenTrust against networkx, beta reputation, tiers with hysteresis,
licence gate, admission, feature gating, plugins adding to or replacing it, restarts."""

from __future__ import annotations

import json
import random
import textwrap

import networkx as nx
import numpy as np
import pytest

from conftest import beat, cluster_yaml
from wyneos_core import hookimpl
from wyneos_core.config import Config
from wyneos_core.model import ORIGIN, Heartbeat, LicenceResult
from wyneos_core.plugins import PluginLoadError
from wyneos_core.trust.eigentrust import eigentrust, local_trust
from wyneos_core.trust.engine import Evidence, TrustEngine
from wyneos_core.trust.observations import Observation, ObservationBatch
from wyneos_core.trust.settings import SIGNALS, TrustSettings, TrustSettingsError
from wyneos_core.trust.tiers import Tier, next_tiers


def settings(**changes) -> TrustSettings:
    section = Config.defaults()["trust"]
    for key, value in changes.items():
        if isinstance(value, dict):
            section[key].update(value)
        else:
            section[key] = value
    return TrustSettings.from_config(section)


def reference_pagerank(n, edges, pretrusted, teleport, credibility=None):
    """EigenTrust the plain way: networkx personalised PageRank on the summed, clipped
    graph. An observer's credibility c < 1 becomes explicit edges to the pre-trusted
    vertices carrying (1 - c) of its row (c = 0: the row is left dangling)."""
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    summed: dict[tuple[int, int], float] = {}
    for a, b, w in edges:
        if a != b:
            summed[(a, b)] = summed.get((a, b), 0.0) + w
    rows: dict[int, float] = {}
    for (a, b), w in summed.items():
        if w > 0:
            g.add_edge(a, b, weight=w)
            rows[a] = rows.get(a, 0.0) + w
    p = {i: (1.0 / len(pretrusted) if i in pretrusted else 0.0) for i in range(n)}
    if credibility is not None:
        for a, total in rows.items():
            c = credibility[a]
            if c <= 0:
                g.remove_edges_from(list(g.out_edges(a)))
                continue
            for j in pretrusted:
                extra = total * (1 - c) / c * p[j]
                if extra:
                    old = g.edges[a, j]["weight"] if g.has_edge(a, j) else 0.0
                    g.add_edge(a, j, weight=old + extra)
    ref = nx.pagerank(g, alpha=1 - teleport, personalization=p, dangling=p, weight="weight",
                      tol=1e-14, max_iter=5000)
    return np.array([ref[i] for i in range(n)])


@pytest.mark.parametrize("seed", range(6))
def test_eigentrust_equals_networkx_personalised_pagerank_on_random_graphs(seed):
    rng = random.Random(seed)
    n = rng.randint(5, 300)
    edges = [(rng.randrange(n), rng.randrange(n), rng.choice([1.0, 1.0, 2.0, 0.5, -1.0, -3.0]))
             for _ in range(rng.randint(n, 6 * n))]
    pretrusted = set(rng.sample(range(n), rng.randint(1, 4)))
    teleport = rng.choice([0.1, 0.15, 0.3, 0.5])
    src, dst, w = (np.array(x) for x in zip(*edges))
    c, dangling = local_trust(src.astype(np.int64), dst.astype(np.int64), w.astype(float), n)
    p = np.zeros(n)
    p[list(pretrusted)] = 1.0 / len(pretrusted)
    got = eigentrust(c, dangling, p, teleport, tolerance=1e-13, max_iterations=5000)
    assert got.converged
    want = reference_pagerank(n, edges, pretrusted, teleport)
    assert np.abs(got.trust - want).max() < 1e-9
    assert got.trust.sum() == pytest.approx(1.0)
    # the matrix is sparse: it holds the distinct positive edges, never n * n entries
    assert c.nnz <= len(edges)  # (c is C transposed: one row per subject)


@pytest.mark.parametrize("seed", range(3))
def test_eigentrust_with_observer_credibility_equals_networkx(seed):
    rng = random.Random(100 + seed)
    n = rng.randint(10, 200)
    edges = [(rng.randrange(n), rng.randrange(n), rng.choice([1.0, 2.0, -1.0])) for _ in range(4 * n)]
    pretrusted = {0, 1}
    cred = np.array([rng.choice([0.0, 0.1, 0.5, 0.9, 1.0]) for _ in range(n)])
    src, dst, w = (np.array(x) for x in zip(*edges))
    c, leak = local_trust(src.astype(np.int64), dst.astype(np.int64), w.astype(float), n, cred)
    p = np.zeros(n)
    p[[0, 1]] = 0.5
    got = eigentrust(c, leak, p, 0.15, tolerance=1e-13, max_iterations=5000)
    want = reference_pagerank(n, edges, pretrusted, 0.15, cred)
    assert np.abs(got.trust - want).max() < 1e-9


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_trust_step_peer_vector_matches_a_plain_eigentrust(seed):
    """The whole step (observations as node ids, the orchestrator's own evidence, witness
    weighting of subjects and credibility of observers) against networkx on the same
    edges built by hand."""
    rng = random.Random(seed)
    n = 120
    ids = [f"n{i:03d}" for i in range(n)]
    attested = set(rng.sample(ids, 3))
    eng = TrustEngine(settings(attested=sorted(attested), peer={"tolerance": 1e-13, "max_iterations": 5000}))
    status = np.array([rng.choice([0, 0, 0, 1, 2, 3]) for _ in ids], dtype=np.int8)
    obs = [Observation(rng.choice(ids), rng.choice(ids), rng.random() < 0.8) for _ in range(700)]
    obs.append(Observation("nobody", ids[0], True))  # unknown observer: dropped
    eng.score(Evidence(1, ids, status, np.zeros(n, dtype=np.int8), observations=obs))
    witness = eng.evidence.scores()[SIGNALS.index("witness")]
    slot = eng.index
    edges = [(slot[o], slot[s], (1.0 if r else -1.0) * witness[slot[s]]) for o, s, r in obs if o in slot]
    edges += [(0, slot[i], witness[slot[i]]) for i, st in zip(ids, status) if st == 0]
    pre = {0} | {slot[i] for i in attested}
    credibility = witness.copy()
    credibility[0] = 1.0
    want = reference_pagerank(n + 1, edges, pre, eng.settings.teleport, credibility)
    assert np.abs(eng.global_trust[: n + 1] - want).max() < 1e-9


def test_batches_and_triples_give_the_same_scores():
    rng = random.Random(4)
    ids = [f"n{i}" for i in range(50)]
    triples = [(rng.choice(ids), rng.choice(ids), rng.random() < 0.7) for _ in range(300)]
    position = {i: k for k, i in enumerate(ids)}
    batch = ObservationBatch(ids, np.array([position[o] for o, _, _ in triples]),
                             np.array([position[s] for _, s, _ in triples]), np.array([r for _, _, r in triples]))
    out = []
    for obs in (triples, batch):
        eng = TrustEngine(settings())
        status = np.zeros(50, dtype=np.int8)
        eng.score(Evidence(1, ids, status, np.zeros(50, dtype=np.int8), observations=obs))
        out.append(eng.global_trust[:51].copy())
    assert np.allclose(out[0], out[1], atol=1e-12)


def test_beta_reputation_with_forgetting_follows_the_formula():
    eng = TrustEngine(settings(forgetting=0.8))
    ids = ["a", "b"]
    status = np.array([0, 2], dtype=np.int8)  # a online, b offline
    for tick in range(1, 6):
        eng.score(Evidence(tick, ids, status, np.array([3, 3], dtype=np.int8)))
    r = sum(0.8 ** k for k in range(5))  # five ticks of +1, each older one forgotten by 0.8
    hb = SIGNALS.index("heartbeat")
    a, b = eng.index["a"], eng.index["b"]
    assert eng.evidence.r[hb, a] == pytest.approx(r)
    assert eng.evidence.scores()[hb, a] == pytest.approx((r + 1) / (r + 2))
    assert eng.evidence.scores()[hb, b] == pytest.approx(1 / (r + 2))
    # no licence result and no observations: those signals hold no evidence (0.5)
    assert eng.evidence.scores()[SIGNALS.index("licence"), a] == 0.5
    assert eng.evidence.scores()[SIGNALS.index("witness"), a] == 0.5


def test_tiers_move_with_hysteresis_and_stay_under_their_cap():
    s = settings()
    enter, leave = s.enter, s.leave  # probation 0.35/0.25, trusted 0.7/0.6, attested 0.8/0.7
    current = np.array([1, 2, 2, 1, 0, 2, 3, 1])
    score = np.array([0.69, 0.61, 0.59, 0.95, 0.3, 0.95, 0.72, 0.1])
    cap = np.array([2, 2, 2, 2, 2, 3, 3, 2])
    got = next_tiers(current, score, enter, leave, cap)
    # below the enter of trusted: stays; above trusted's leave: stays; below it: drops;
    # 0.95 but capped at trusted; 0.3 below probation's enter: stays untrusted;
    # attested only where allowed; attested held above its leave; 0.1 drops to untrusted
    assert got.tolist() == [1, 2, 1, 2, 0, 3, 3, 0]


def test_a_score_hovering_around_a_threshold_does_not_flap():
    s = settings()
    tier = np.array([1])
    seen = []
    for x in [0.71, 0.66, 0.69, 0.64, 0.68, 0.62, 0.7, 0.61, 0.59, 0.65, 0.69, 0.7]:
        tier = next_tiers(tier, np.array([x]), s.enter, s.leave, np.array([2]))
        seen.append(int(tier[0]))
    assert seen == [2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2]


@pytest.mark.parametrize("section, field", [
    ({"tiers": {"trusted": {"enter": 0.6, "leave": 0.7}}}, "tiers.trusted.leave"),
    ({"licence_cap": 0.3}, "licence_cap"),
    ({"features": {"gpu": "gold"}}, "features.gpu"),
])
def test_bad_settings_are_refused_naming_the_field(section, field):
    with pytest.raises(TrustSettingsError) as info:
        settings(**section)
    assert info.value.field == field


# -- the plugin inside the tick --------------------------------------------------------------


def run(orch, clock, ticks, nodes=None, **metadata):
    reports = []
    for _ in range(ticks):
        beat(orch, clock, *(nodes if nodes is not None else [n.id for n in orch.registry]), **metadata)
        reports.append(orch.tick())
        clock.advance(5)
    return reports


def test_declared_nodes_climb_to_trusted_and_a_silent_one_falls(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(6))
    reports = run(orch, clock, 6)
    first, last = reports[0].to_dict(), reports[-1].to_dict()
    assert first["trust"]["tiers"]["probation"] == 6          # everyone starts in probation
    assert last["trust"]["tiers"]["trusted"] == 6
    assert all(0.7 <= n["trust"] <= 1 and n["trust_tier"] == "trusted" for n in last["nodes"])
    assert {c["node_id"] for r in reports for c in r.trust["changes"]} == {f"n0{i}" for i in range(1, 7)}
    # n06 stops heartbeating: its heartbeat signal and its peer score sink, it drops a tier
    reports = run(orch, clock, 14, nodes=[f"n0{i}" for i in range(1, 6)])
    n06 = orch.registry.get("n06")
    assert n06.trust_tier in ("probation", "untrusted") and n06.trust < 0.6
    drops = [c for r in reports for c in r.trust["changes"] if c["node_id"] == "n06"]
    assert drops and drops[0]["from"] == "trusted"
    from wyneos_core.builtin.report import summary_lines

    printed = [line for r in reports for line in summary_lines(r)]
    assert any(line.startswith(f"  trust    1 trusted -> {drops[0]['to']} (n06") for line in printed), printed
    verbose = [line for r in reports for line in summary_lines(r, verbosity="verbose")]
    assert any(line.startswith(f"  trust    n06: trusted -> {drops[0]['to']} (score ") for line in verbose)
    assert all(orch.registry.get(f"n0{i}").trust_tier == "trusted" for i in range(1, 6))


def test_an_invalid_licence_caps_the_node_at_untrusted(make_orchestrator, clock):
    class Licences:
        @hookimpl
        def wyneos_licence_validate(self, nodes):
            return [LicenceResult(n.id, n.id != "n02", "ok" if n.id != "n02" else "expired") for n in nodes]

    orch = make_orchestrator(cluster_yaml(3), plugins=[Licences()])
    run(orch, clock, 8)
    n02 = orch.registry.get("n02")
    assert n02.trust_tier == "untrusted"
    assert n02.trust <= Config.defaults()["trust"]["licence_cap"]
    assert orch.registry.get("n01").trust_tier == "trusted"


def test_a_raising_trust_plugin_is_recorded_and_the_tick_goes_on(make_orchestrator, clock):
    class Broken:
        @hookimpl
        def wyneos_trust(self, nodes):
            raise RuntimeError("trust oracle down")

    orch = make_orchestrator(cluster_yaml(3), plugins=[Broken()])
    report = run(orch, clock, 2)[-1]
    assert any(e.hook == "wyneos_trust" and "trust oracle down" in e.error for e in report.errors)
    assert report.trust["tiers"]["probation"] + report.trust["tiers"]["trusted"] == 3  # the builtin still ran
    assert report.actions is not None and report.timings_ms["propagate"] >= 0


def test_a_plugin_can_lower_trust_but_never_raise_it(make_orchestrator, clock):
    class Opinion:
        @hookimpl
        def wyneos_trust(self, nodes):
            return {"n01": (0.1, "untrusted"), "n02": (1.0, "attested"), "n03": ("high", "gold")}

    orch = make_orchestrator(cluster_yaml(3), plugins=[Opinion()])
    report = run(orch, clock, 6)[-1]
    assert orch.registry.get("n01").trust == 0.1 and orch.registry.get("n01").trust_tier == "untrusted"
    n02 = orch.registry.get("n02")
    assert n02.trust < 1.0 and n02.trust_tier == "trusted"  # the builtin's lower values win
    assert any(e.hook == "wyneos_trust" and e.kind == "invalid_result" for e in report.errors)
    assert orch.registry.get("n03").trust_tier == "trusted"  # the garbage entry is dropped


def test_the_builtin_can_be_replaced(make_orchestrator, clock):
    class Flat:
        @hookimpl
        def wyneos_trust(self, nodes):
            return {n.id: (0.5, "probation") for n in nodes}

    text = cluster_yaml(3, disable="[licence, trust]")
    orch = make_orchestrator(text, plugins=[Flat()])
    report = run(orch, clock, 3)[-1]
    assert report.trust["tiers"] == {"untrusted": 0, "probation": 3, "trusted": 0, "attested": 0}
    assert "peer" not in report.trust  # no builtin step ran


def test_feature_gating_by_tier(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(3), sections={"trust": {"features": {"gpu": "trusted", "sso": "probation"}}})
    first = run(orch, clock, 1)[0]
    gated = [a for a in first.actions if a.type == "gate_feature"]
    assert {a.target for a in gated} == {"n01", "n02", "n03"}  # probation is below trusted
    assert all(a.params == {"features": ["gpu"]} and a.origin == "trust" for a in gated)
    assert first.trust["gated"] == 3
    later = run(orch, clock, 5)[-1]
    assert later.trust["gated"] == 0  # trusted now: the gate's cause is gone
    assert not [a for a in later.proposed if a.type == "gate_feature"]


def test_attested_nodes_are_pre_trusted_and_can_reach_attested(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(4), sections={"trust": {"attested": ["n01"]}})
    run(orch, clock, 10)
    assert orch.registry.get("n01").trust_tier == "attested"
    assert {orch.registry.get(f"n0{i}").trust_tier for i in (2, 3, 4)} == {"trusted"}


# -- admission ---------------------------------------------------------------------------------


def test_a_node_registering_by_heartbeat_starts_in_probation_and_is_admitted_after_it(make_orchestrator, clock):
    text = cluster_yaml(2) + "\n" + "trust: {admission: {probation_ticks: 3}}\n"
    text = text.replace("max_clock_skew: 30}", "max_clock_skew: 30, unknown_nodes: register}")
    orch = make_orchestrator(text)
    decisions = []
    tiers = []
    for _ in range(10):
        beat(orch, clock, "n01", "n02", "newcomer")
        report = orch.tick()
        decisions += [a for a in report.trust["admission"] if a["node_id"] == "newcomer"]
        tiers.append(orch.registry.get("newcomer").trust_tier)
        clock.advance(5)
    assert tiers[0] == "probation"
    assert decisions[0]["decision"] == "held"
    assert decisions[0]["reason"]  # says why: its score, or the ticks of probation left
    assert decisions[-1]["decision"] == "admitted"
    first_trusted = tiers.index("trusted")
    assert first_trusted >= 3 and all(t == "probation" for t in tiers[:first_trusted])


def test_admission_rules_from_a_file_refuse_with_the_reason(make_orchestrator, clock, tmp_path):
    rules = tmp_path / "admission.yaml"
    rules.write_text(textwrap.dedent("""\
        admission:
          - id: refuse-untagged
            description: nodes must say which site they are in
            when: node.metadata.site is missing
            decision: refuse
        """))
    text = cluster_yaml(1).replace("max_clock_skew: 30}", "max_clock_skew: 30, unknown_nodes: register}")
    orch = make_orchestrator(text, sections={"trust": {"admission": {"rules": str(rules), "probation_ticks": 1}}})
    for _ in range(6):
        beat(orch, clock, "n01")
        orch.intake.put_many([Heartbeat("drifter", clock(), 0.2, {}), Heartbeat("sited", clock(), 0.2, {"site": "x"})])
        report = orch.tick()
        clock.advance(5)
        if report.tick == 1:
            first = {a["node_id"]: a for a in report.trust["admission"]}
    assert first["drifter"]["decision"] == "refused"
    assert first["drifter"]["rule"] == "refuse-untagged"
    assert first["drifter"]["reason"] == "nodes must say which site they are in"
    assert orch.registry.get("drifter").trust_tier == "untrusted"
    assert orch.registry.get("sited").trust_tier == "trusted"
    assert report.trust["refused"] == 1


def test_a_bad_admission_file_stops_the_start_naming_file_and_line(make_orchestrator, tmp_path):
    rules = tmp_path / "admission.yaml"
    rules.write_text("admission:\n  - id: x\n    when: node.trust <\n    decision: refuse\n")
    with pytest.raises(Exception) as info:
        make_orchestrator(cluster_yaml(1), sections={"trust": {"admission": {"rules": str(rules), "probation_ticks": 3}}})
    text = str(info.value)
    assert "admission.yaml:3" in text and "admission[0].when" in text and "syntax error" in text


# -- persistence, restarts and whitewashing ----------------------------------------------------


def test_trust_is_carried_across_a_restart(make_orchestrator, clock, tmp_path):
    from wyneos_core.tick import Orchestrator
    from conftest import config_from

    path = tmp_path / "state.db"
    config = config_from(cluster_yaml(3), state={"path": str(path)})
    orch = Orchestrator(config, clock=clock, load_entrypoints=False)
    run(orch, clock, 8)
    before = {n.id: (n.trust, n.trust_tier) for n in orch.registry}
    orch.stop()
    assert all(t == "trusted" for _, t in before.values())
    again = Orchestrator(config_from(cluster_yaml(3), state={"path": str(path)}), clock=clock, load_entrypoints=False)
    try:
        report = run(again, clock, 1)[0]
        assert report.trust["tiers"]["trusted"] == 3  # a fresh start would put them in probation
        assert report.trust["changes"] == []
        for node in again.registry:
            assert node.trust == pytest.approx(before[node.id][0], abs=0.05)
    finally:
        again.stop()
    # and a fresh state file does start them over
    fresh = Orchestrator(config_from(cluster_yaml(3), state={"path": str(tmp_path / "other.db")}), clock=clock,
                         load_entrypoints=False)
    try:
        assert run(fresh, clock, 1)[0].trust["tiers"]["probation"] == 3
    finally:
        fresh.stop()


def test_re_enrolling_the_same_key_under_a_new_id_keeps_the_old_record():
    eng = TrustEngine(settings())
    ids = ["good", "bad"]
    fps = ["fp-good", "fp-bad"]
    for tick in range(1, 8):  # "bad" is offline and refuses messages for a while
        eng.score(Evidence(tick, ids, np.array([0, 2], dtype=np.int8), np.zeros(2, dtype=np.int8),
                           fingerprints=fps, refusals={"bad": 3}))
        eng.assign({})
    bad = eng.trust[eng.index["bad"]]
    # it comes back as "reborn" with the same key: no clean slate
    eng.score(Evidence(8, ["good", "reborn"], np.array([0, 0], dtype=np.int8), np.zeros(2, dtype=np.int8),
                       fingerprints=["fp-good", "fp-bad"]))
    eng.assign({})
    reborn = eng.index["reborn"]
    assert eng.evidence.s[SIGNALS.index("refusals"), reborn] > 1
    assert eng.trust[reborn] < 0.55 and bad < 0.4
    fresh = TrustEngine(settings())
    fresh.score(Evidence(1, ["reborn"], np.array([0], dtype=np.int8), np.zeros(1, dtype=np.int8),
                         fingerprints=["fp-new"]))
    assert fresh.trust[fresh.index["reborn"]] > eng.trust[reborn]


def test_refused_messages_and_witness_lies_lower_the_behaviour_score():
    eng = TrustEngine(settings())
    ids = ["honest", "liar", "noisy", "x"]
    status = np.zeros(4, dtype=np.int8)
    for tick in range(1, 6):
        obs = [("honest", "x", True), ("liar", "x", False), ("liar", "honest", False)]
        eng.score(Evidence(tick, ids, status, np.zeros(4, dtype=np.int8), observations=obs,
                           refusals={"noisy": 10}))
    info = {i: eng.explain(i) for i in ids}
    sig = {i: {s["signal"]: s for s in info[i]["signals"]} for i in ids}
    assert sig["liar"]["witness"]["score"] < 0.2 < 0.8 < sig["honest"]["witness"]["score"]
    assert sig["noisy"]["refusals"]["negative"] > 0 and sig["noisy"]["refusals"]["score"] < 0.2
    assert info["liar"]["trust"] < info["honest"]["trust"]
    assert info["noisy"]["trust"] < info["honest"]["trust"]
    assert sig["liar"]["witness"]["pull"] < 0 < sig["honest"]["witness"]["pull"]
    # a liar's word about "x" is discounted and its own peer score sinks
    assert info["liar"]["peer"] < info["honest"]["peer"]


def test_only_changed_rows_are_written_again():
    eng = TrustEngine(settings())
    ids = [f"n{i}" for i in range(20)]
    scores = eng.score(Evidence(1, ids, np.zeros(20, dtype=np.int8), np.zeros(20, dtype=np.int8)))
    eng.assign({})
    assert len(eng.rows_to_persist(scores.slots, everything=True)) == 20
    assert eng.rows_to_persist(scores.slots) == []          # nothing moved since
    eng.tier[scores.slots[3]] = int(Tier.UNTRUSTED)          # one tier changes
    rows = eng.rows_to_persist(scores.slots)
    assert [r[0] for r in rows] == ["n3"] and rows[0][3] == "untrusted"
    restored = TrustEngine(settings())
    assert restored.restore([dict(zip(("node_id", "fingerprint", "trust", "tier", "admission", "admission_reason",
                                       "joined_tick", "evidence", "updated_tick"), r)) for r in rows]) == 1
    assert restored.tier[restored.index["n3"]] == int(Tier.UNTRUSTED)


def test_an_empty_cluster_and_garbage_observations_do_not_break_the_step(make_orchestrator, clock):
    class Garbage:
        @hookimpl
        def wyneos_heartbeat(self, ctx):
            ctx.scratch["observations"] = [("n01", "n02", "yes"), ("ghost", "n01", True), (1, 2, 3), "x",
                                           ("n01", "n02", True), ("n02", "n02", True)]

    orch = make_orchestrator(cluster_yaml(2), plugins=[Garbage()])
    report = run(orch, clock, 2)[-1]
    assert not [e for e in report.errors if e.hook == "wyneos_trust"]
    assert report.trust["peer"]["observations"] == 1        # only the well-formed edge between two nodes
    assert report.trust["peer"]["observations_dropped"] == 5
    empty = TrustEngine(settings())
    scores = empty.score(Evidence(1, [], np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.int8)))
    assert empty.assign({}) == [] and scores.combined.size == 0


def test_explain_lists_the_signals_that_moved_trust_from_the_state_file(tmp_path, clock, capsys):
    from conftest import config_from
    from wyneos_core.cli import main
    from wyneos_core.store import StateStore
    from wyneos_core.tick import Orchestrator

    text = cluster_yaml(2) + f"state: {{path: {tmp_path / 'state.db'}}}\n"
    orch = Orchestrator(config_from(text), clock=clock, load_entrypoints=False)
    run(orch, clock, 8)
    orch.stop()
    before = StateStore.open(tmp_path / "state.db").trust_rows()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    assert main(["explain", "--node", "n01", "--config", str(cfg), "--ticks", "1"]) == 0
    out = capsys.readouterr().out
    assert "tier trusted; admission admitted" in out          # carried on from the state file
    table = out[out.index("\ntrust "):]
    signals = {parts[0]: parts for parts in (line.split() for line in table.splitlines()) if parts
               and parts[0] in SIGNALS}
    assert set(signals) == set(SIGNALS)
    assert float(signals["refusals"][1]) == 1.5                 # its weight
    assert float(signals["licence"][5]) == 0                    # the licence step is off: no pull
    assert main(["explain", "--node", "n01", "--config", str(cfg), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["trust"]
    assert data["tier"] == "trusted" and data["behaviour_weight"] == 0.6
    assert {s["signal"] for s in data["signals"]} == set(SIGNALS)
    assert StateStore.open(tmp_path / "state.db").trust_rows() == before  # read only


def test_observations_of_a_node_that_left_are_dropped_and_its_record_kept():
    eng = TrustEngine(settings())
    status = np.zeros(3, dtype=np.int8)
    eng.score(Evidence(1, ["a", "b", "c"], status, np.zeros(3, dtype=np.int8)))
    scores = eng.score(Evidence(2, ["a", "b"], status[:2], np.zeros(2, dtype=np.int8),
                                observations=[("a", "c", True), ("c", "a", True), ("a", "b", True)]))
    assert (scores.observations_used, scores.observations_dropped) == (1, 2)
    assert abs(eng.global_trust.sum() - 1) < 1e-9 and eng.global_trust[eng.index["c"]] == 0
    assert "c" in eng.index  # kept: re-enrolling as "c" carries on from its record


def test_consensus_witnesses_are_weighted_by_tier(make_orchestrator, clock):
    class Reader:
        seen: list = []

        @hookimpl
        def wyneos_enforcement(self, ctx):
            Reader.seen.append(dict(ctx.scratch.get("witness_weights", {})))
            return []

    class Licences:
        @hookimpl
        def wyneos_licence_validate(self, nodes):
            return [LicenceResult(n.id, n.id != "n03", "ok" if n.id != "n03" else "revoked") for n in nodes]

    orch = make_orchestrator(cluster_yaml(3), plugins=[Reader(), Licences()])
    run(orch, clock, 6)
    assert Reader.seen[0] == {"n03": 0.0}   # untrusted (licence revoked); probation counts fully by default
    assert Reader.seen[-1] == {"n03": 0.0}
    Reader.seen.clear()
    halved = make_orchestrator(cluster_yaml(3), plugins=[Reader(), Licences()],
                               sections={"trust": {"witness_weights": {"untrusted": 0.0, "probation": 0.5,
                                                                       "trusted": 1.0, "attested": 1.0}}})
    run(halved, clock, 6)
    assert Reader.seen[0] == {"n01": 0.5, "n02": 0.5, "n03": 0.0}  # probation, probation, untrusted
    assert Reader.seen[-1] == {"n03": 0.0}                           # n01, n02 trusted: weight 1, not listed


def test_agent_acknowledgements_and_service_refusals_reach_the_next_step(make_orchestrator, clock):
    from wyneos_core.builtin.trust import explain, record_acks, record_refusals

    orch = make_orchestrator(cluster_yaml(2))
    run(orch, clock, 1)
    record_acks(orch, [("n01", True), ("n01", True), ("n02", False)])
    record_refusals(orch, ["n02", "n02", "ghost"])
    run(orch, clock, 1)
    sig = {i: {s["signal"]: s for s in explain(orch, i)["signals"]} for i in ("n01", "n02")}
    assert sig["n01"]["acknowledgements"]["positive"] == 2.0
    assert sig["n02"]["acknowledgements"]["negative"] == 1.0
    assert sig["n02"]["refusals"]["negative"] == 2.0 and sig["n01"]["refusals"]["negative"] == 0.0
    run(orch, clock, 1)  # drained: nothing counted twice
    assert explain(orch, "n02")["signals"][SIGNALS.index("refusals")]["negative"] == pytest.approx(2.0 * 0.9)


def test_witness_observations_carried_by_heartbeats_feed_the_peer_score(make_orchestrator, clock):
    from wyneos_core.model import Observation

    orch = make_orchestrator(cluster_yaml(4))
    ids = ["n01", "n02", "n03", "n04"]
    for _ in range(6):
        orch.intake.put_many(
            Heartbeat(i, clock(), 0.3, {}, observations=tuple(
                Observation(i, other, i != "n04", None, None, True) for other in ids if other != i))
            for i in ids)  # n04 says everyone is down: a liar
        report = orch.tick()
        clock.advance(5)
    assert report.trust["peer"]["observations"] == 12
    from wyneos_core.builtin.trust import explain

    liar = {s["signal"]: s for s in explain(orch, "n04")["signals"]}["witness"]
    assert liar["negative"] > 3 and liar["score"] < 0.2
    assert orch.registry.get("n04").trust < orch.registry.get("n01").trust


def test_typed_observations_and_plugin_triples_are_read_together():
    from types import SimpleNamespace

    from wyneos_core.trust.observations import MixedObservations, observations_of

    typed = [SimpleNamespace(observer="a", subject="b", reachable=True)]
    ctx = SimpleNamespace(scratch={"observations": [("b", "a", False)]}, observations=typed)
    both = observations_of(ctx)
    assert isinstance(both, MixedObservations) and len(both) == 2
    eng = TrustEngine(settings())
    scores = eng.score(Evidence(1, ["a", "b"], np.zeros(2, dtype=np.int8), np.zeros(2, dtype=np.int8),
                                observations=both))
    assert (scores.observations_used, scores.observations_dropped) == (2, 0)


def test_moved_trust_is_written_a_share_per_tick_and_tier_changes_at_once():
    eng = TrustEngine(settings())
    ids = [f"n{i}" for i in range(20)]
    scores = eng.score(Evidence(1, ids, np.zeros(20, dtype=np.int8), np.zeros(20, dtype=np.int8)))
    eng.assign({})
    eng.rows_to_persist(scores.slots, everything=True)
    eng.trust[scores.slots] += 0.2                           # every node's trust moves
    eng.tier[scores.slots[1]] = int(Tier.UNTRUSTED)          # and one tier changes
    written: list[str] = []
    for _ in range(4):
        rows = eng.rows_to_persist(scores.slots, spread=4)
        assert len(rows) <= 20 // 4 + 1
        written += [r[0] for r in rows]
        eng.tick += 1
    assert sorted(written) == sorted(ids)                    # each node once within 4 ticks
    assert eng.rows_to_persist(scores.slots, spread=4) == []
