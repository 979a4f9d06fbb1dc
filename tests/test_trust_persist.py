"""Trust in the state file as chunks of slots: only what changed is written, in one
transaction; a refused write changes nothing and is tried again; a restart brings back
the same trust, tiers and admission; a file of the per-node table is carried over."""

from __future__ import annotations

import dataclasses
import sqlite3

import numpy as np
import pytest

from conftest import beat, cluster_yaml, config_from
from wyneos_core.builtin.trust import state_of
from wyneos_core.store import StateStore
from wyneos_core.tick import Orchestrator
from wyneos_core.trust import persist
from wyneos_core.trust.engine import ADMITTED, PENDING, REFUSED, Evidence, TrustEngine
from wyneos_core.trust.tiers import Tier
from test_trust import settings


def scored_engine(n: int) -> tuple[TrustEngine, np.ndarray]:
    eng = TrustEngine(settings())
    ids = [f"n{i:05d}" for i in range(n)]
    status = np.zeros(n, dtype=np.int8)
    status[::7] = 2
    scores = eng.score(Evidence(1, ids, status, np.zeros(n, dtype=np.int8)))
    eng.assign({})
    return eng, scores.slots


def written(path, tick: int) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT first_slot FROM trust_chunks WHERE updated_tick = ? "
                                           "ORDER BY first_slot", (tick,))]
    finally:
        conn.close()


def state(eng: TrustEngine) -> dict[str, tuple]:
    return {node_id: (round(float(eng.trust[s]), 2), int(eng.tier[s]), int(eng.admission[s]),
                      eng.evidence.r[:, s].tolist(), eng.evidence.s[:, s].tolist(), int(eng.joined[s]))
            for s, node_id in enumerate(eng.ids) if s}


def test_only_the_chunks_holding_a_change_are_written(tmp_path):
    path = tmp_path / "state.db"
    store = StateStore.open(path)
    eng, slots = scored_engine(2500)                            # 2,501 slots: three chunks
    assert store.trust_chunk_table.write(persist.encode_chunks(eng, persist.chunks_changed(eng, everything=True)),
                                    replace=True) == 3
    persist.mark_written(eng, range(3))
    assert written(path, 1) == [0, 1024, 2048]
    assert persist.chunks_changed(eng).size == 0                # nothing moved since
    eng.tick = 2
    eng.tier[eng.index["n01500"]] = int(Tier.UNTRUSTED)         # one tier, in the second chunk
    chunks = persist.chunks_changed(eng)
    assert chunks.tolist() == [1]
    store.trust_chunk_table.write(persist.encode_chunks(eng, chunks))
    persist.mark_written(eng, chunks)
    assert written(path, 2) == [1024] and written(path, 1) == [0, 2048]
    rows = {r["node_id"]: r for r in StateStore.open(path).trust_rows()}
    assert len(rows) == 2500 and rows["n01500"]["tier"] == "untrusted"
    # moved trust: a chunk in ``spread`` each tick, every chunk within ``spread`` ticks
    eng.trust[slots] += 0.2
    seen: list[int] = []
    for tick in range(3, 6):
        eng.tick = tick
        chunks = persist.chunks_changed(eng, spread=3)
        assert chunks.size <= 1
        persist.mark_written(eng, chunks)
        seen += chunks.tolist()
    assert sorted(seen) == [0, 1, 2]


def test_a_refused_write_changes_nothing_and_is_written_next_tick(tmp_path, clock):
    path = tmp_path / "state.db"
    orch = Orchestrator(config_from(cluster_yaml(4), state={"path": str(path)}), clock=clock, load_entrypoints=False)
    try:
        for _ in range(2):
            beat(orch, clock, "n01", "n02", "n03", "n04")
            orch.tick()
            clock.advance(5)
        before = StateStore.open(path).trust_chunk_table.read()
        assert before and before[0][5] == 2
        conn = sqlite3.connect(path)
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON trust_chunks BEGIN SELECT RAISE(ABORT, 'refused'); END")
        conn.close()
        beat(orch, clock, "n01", "n02", "n03")                  # n04 falls silent: trust moves
        report = orch.tick()
        clock.advance(5)
        assert [e.hook for e in report.errors if e.plugin == "trust"] == ["wyneos_tick_report"]
        assert StateStore.open(path).trust_chunk_table.read() == before     # nothing half-written
        engine = orch._trust_state.engine
        pending = persist.chunks_changed(engine)
        assert pending.tolist() == [0]                          # still owed to the store
        conn = sqlite3.connect(path)
        conn.execute("DROP TRIGGER refuse")
        conn.close()
        beat(orch, clock, "n01", "n02", "n03")
        report = orch.tick()
        assert not report.errors
        stored = {r["node_id"]: r for r in StateStore.open(path).trust_rows()}
        live = engine.index["n04"]
        assert stored["n04"]["trust"] == pytest.approx(float(engine.trust[live]), abs=1e-6)
    finally:
        orch.stop()


def test_a_restart_from_the_state_file_gives_the_same_trust_and_decisions(tmp_path, clock):
    path = tmp_path / "state.db"
    text = cluster_yaml(6)

    def start() -> Orchestrator:
        return Orchestrator(config_from(text, state={"path": str(path)}), clock=clock, load_entrypoints=False)

    orch = start()
    try:
        for tick in range(8):
            # n06 falls silent after three ticks: offline, isolated by the healing step
            beat(orch, clock, *(f"n0{i}" for i in range(1, 7 if tick < 3 else 6)))
            orch.tick()
            clock.advance(10)
        engine = orch._trust_state.engine
        assert not persist.chunks_changed(engine).size          # the store holds what the engine holds
        kept = state(engine)
        in_force = sorted((h.action.type, h.action.target) for h in orch._decide_state.in_force.values())
        assert ("isolate", "n06") in in_force
    finally:
        orch.stop()
    again = start()
    try:
        restored = state(state_of(again).engine)
        assert restored.keys() == kept.keys()
        for node_id, (trust, tier, adm, r, s, joined) in kept.items():
            got = restored[node_id]
            assert got[:3] == (trust, tier, adm) and got[5] == joined, node_id
            assert got[3] == pytest.approx(r, abs=1e-6) and got[4] == pytest.approx(s, abs=1e-6)
        beat(again, clock, *(f"n0{i}" for i in range(1, 6)))
        report = again.tick()
        assert report.trust["changes"] == []                    # no node starts over
        assert sorted((h.action.type, h.action.target) for h in again._decide_state.in_force.values()) == in_force
    finally:
        again.stop()


def test_a_state_file_of_per_node_rows_is_carried_over_to_chunks(tmp_path, clock):
    path = tmp_path / "state.db"
    old = TrustEngine(settings())
    ids = ["n01", "n02", "n03"]
    for tick in range(1, 7):
        old.score(Evidence(tick, ids, np.zeros(3, dtype=np.int8), np.zeros(3, dtype=np.int8)))
        old.assign({})
    store = StateStore.open(path)
    store.write_trust(old.rows_to_persist(old._scores.slots, everything=True))   # an earlier version's table
    store.close()
    orch = Orchestrator(config_from(cluster_yaml(3), state={"path": str(path)}), clock=clock, load_entrypoints=False)
    try:
        engine = state_of(orch).engine
        for node_id in ids:
            assert engine.tier[engine.index[node_id]] == old.tier[old.index[node_id]]
        beat(orch, clock, *ids)
        orch.tick()
    finally:
        orch.stop()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM trust").fetchone()[0] == 0   # now in the chunks
        assert conn.execute("SELECT COUNT(*) FROM trust_chunks").fetchone()[0] == 1
    finally:
        conn.close()


@pytest.mark.parametrize("damage", ["layout", "length", "ids", "nan"])
def test_a_damaged_chunk_is_not_read_its_nodes_start_over(tmp_path, damage):
    eng, _ = scored_engine(10)
    chunk = list(persist.encode_chunks(eng, [0])[0])
    if damage == "layout":
        chunk[4] = "trust-record/99:6"
    elif damage == "length":
        chunk[3] = chunk[3][:-3]
    elif damage == "ids":
        chunk[1] = '["n1", 5]'
    else:
        rec = np.frombuffer(chunk[3], dtype=persist.RECORD).copy()
        rec["trust"][2] = np.nan
        chunk[3] = rec.tobytes()
    fresh = TrustEngine(settings())
    assert persist.restore_chunks(fresh, [tuple(chunk)]) == 0 and fresh.ids == ["orchestrator"]
    assert persist.restore_chunks(fresh, persist.encode_chunks(eng, [0])) == 10


def test_admission_probes_made_from_the_columns_are_the_nodes_snapshots(clock):
    from wyneos_core.builtin.trust import _probes

    text = cluster_yaml(6).replace("{id: n03, licence: lic-03}", "{id: n03, licence: lic-03, metadata: {zone: eu}}")
    orch = Orchestrator(config_from(text), clock=clock, load_entrypoints=False, store=False)
    try:
        beat(orch, clock, "n01", "n02", "n03", "n05")
        orch.tick()
        clock.advance(20)
        beat(orch, clock, "n01", "n03")
        orch.tick()
        nodes = orch.registry.nodes()
        at = np.array([0, 1, 2, 3, 5])
        trust, tiers = [0.25, 0.5, 0.75, 1.0, 0.0], ["probation", "untrusted", "trusted", "probation", "trusted"]
        want = []
        for k, i in enumerate(at.tolist()):
            snap = nodes[i].snapshot()
            snap.trust, snap.trust_tier = trust[k], tiers[k]
            want.append(snap)
        assert _probes(nodes, at, trust, tiers) == want
        assert _probes(list(nodes), at, trust, tiers) == want
        assert {n.status.value for n in want} == {"online", "stale", "unknown"} and want[2].metadata == {"zone": "eu"}
    finally:
        orch.stop()


def test_admission_over_the_columns_decides_as_node_by_node(tmp_path):
    """``decide_columns`` (masks, one evaluation per distinct licence result, closures for
    the rest) against ``decide`` (every rule node by node) on random scores, tiers and
    probation times, with rules of each kind and in an order where each one matters."""
    import random

    from tests.conftest import FakeClock
    from tests.test_licence_support import DAY, T0, Issuer, licence_config, orchestrator
    from wyneos_core.builtin.trust import _probes, _Scored
    from wyneos_core.rules.interp import EvalEnv
    from wyneos_core.rules.vector import Columns
    from wyneos_core.trust.admission import AdmissionRules, load_admission
    from wyneos_core.trust.tiers import TIER_NAMES

    issuer = Issuer(tmp_path)
    d = tmp_path / "licences"
    issuer.write(d, "ok")
    issuer.write(d, "old", expires=T0 - DAY, issued=T0 - 30 * DAY)
    issuer.write(d, "other", customer="globex")
    specs = []
    for i in range(60):
        spec = {"id": f"n{i:02d}", "metadata": {"zone": "eu" if i % 3 else "us"}}
        if i % 5:
            spec["licence"] = ("ok", "old", "other", "ok")[i % 4]
        specs.append(spec)
    rules_file = tmp_path / "admission.yaml"
    rules_file.write_text("""
admission:
  - id: refuse-foreign
    when: licence.reason == "customer_mismatch"
    decision: refuse
  - id: hold-us
    when: node.metadata.zone == "us" and node.trust > 0.3
    decision: hold
  - id: hold-offline
    when: node.status != "online" or heartbeat_age(node) > 50
    decision: hold
  - id: refuse-expired-and-low
    when: licence.reason == "expired" and node.trust < 0.5
    decision: refuse
  - id: hold-low
    when: node.trust < 0.4 or not trust_at_least("probation")
    decision: hold
  - id: hold-valid-busy
    when: licence.valid and node.load > 0.5
    decision: hold
""")
    clock = FakeClock(T0)
    orch = orchestrator(licence_config(tmp_path, specs), clock)
    try:
        from conftest import beat

        beat(orch, clock, *(s["id"] for s in specs if int(s["id"][1:]) % 7))
        orch.tick()
        clock.advance(30)
        beat(orch, clock, *(s["id"] for s in specs if int(s["id"][1:]) % 7 and int(s["id"][1:]) % 11))
        report = orch.tick()
        nodes = orch.registry.nodes()
        rules = load_admission(rules_file, probation_ticks=3)
        assert [r.licence_only for r in rules.rules] == [True, False, False, False, False, False]
        assert any(r.mask is not None for r in rules.rules)
        # the same rules without masks: the licence-only one once per licence result, the rest node by node
        unmasked = AdmissionRules([dataclasses.replace(r, mask=None) for r in rules.rules], rules.probation_ticks,
                                  rules.source)
        env = EvalEnv(clock(), {})
        rng = random.Random(5)
        seen = set()
        for _ in range(5):
            trust = np.array([rng.random() for _ in nodes])
            tiers = np.array([rng.randrange(4) for _ in nodes], dtype=np.int8)
            spent = np.array([rng.randrange(6) for _ in nodes])
            pending = np.array(sorted(rng.sample(range(len(nodes)), 45)))

            def probe(at, trust=trust, tiers=tiers):
                return _probes(nodes, at, trust[at].tolist(), [TIER_NAMES[t] for t in tiers[at].tolist()])

            probes = probe(pending)
            want = rules.decide(probes, report.licences, env, {p.id: int(s) for p, s in zip(probes, spent[pending])})
            columns = Columns(_Scored(orch.registry.table, nodes.slots, trust, tiers), nodes.slots[pending])
            for variant in (rules, unmasked):
                got = variant.decide_columns(nodes, pending, probe, report.licences, columns, env, spent[pending])
                assert got == want
            seen.update((d, rule) for d, rule, _ in want.values())
        assert {d for d, _ in seen} == {"admit", "hold", "refuse"}
        assert {rule for _, rule in seen} >= {"refuse-foreign", "hold-us", "hold-offline", "hold-low", "probation_ticks"}
    finally:
        orch.stop()


def test_a_fingerprint_learnt_after_joining_is_kept_and_inherited():
    eng = TrustEngine(settings())
    zeros = np.zeros(2, dtype=np.int8)
    eng.score(Evidence(1, ["a", "c"], zeros, zeros))              # no key yet
    eng.assign({})
    eng.tier[eng.index["a"]] = int(Tier.UNTRUSTED)
    eng.score(Evidence(2, ["a", "c"], zeros, zeros, fingerprints=["fp-a", None]))
    assert eng.fingerprint_of.get("fp-a") == eng.index["a"] and len(eng.fingerprint_of) == 1
    assert eng.fingerprint[eng.index["a"]] == "fp-a" and eng.fingerprint_of.get("fp-c") is None
    chunks = persist.encode_chunks(eng, [0])
    again = TrustEngine(settings())
    assert persist.restore_chunks(again, chunks) == 2 and again.fingerprint_of.get("fp-a") == again.index["a"]
    again.score(Evidence(3, ["b"], np.zeros(1, dtype=np.int8), np.zeros(1, dtype=np.int8), fingerprints=["fp-a"]))
    assert again.tier[again.index["b"]] == int(Tier.UNTRUSTED)  # the same key under a new id: no fresh start


@pytest.mark.parametrize("scans", [0, 1000])
def test_new_ids_inherit_from_the_slot_that_last_had_their_key(monkeypatch, scans):
    """Whichever way the key log is searched (a sort for a batch, or a scan per node): a
    new id takes over the tier cap and refusal of the node that last had its key, a key
    rotated to another node is that node's from then on, and a node of the same batch
    inherits what an earlier one with its key inherited."""
    from wyneos_core.trust import fingerprints

    monkeypatch.setattr(fingerprints, "_SCANS", scans)
    eng = TrustEngine(settings())

    def score(tick, ids, fps):  # noqa: ANN001, ANN202
        zeros = np.zeros(len(ids), dtype=np.int8)
        return eng.score(Evidence(tick, ids, zeros, zeros, fingerprints=fps))

    first = [f"a{i}" for i in range(10)]
    score(1, first, [f"k{i}" for i in range(10)])
    for i, node_id in enumerate(first):
        slot = eng.index[node_id]
        eng.tier[slot] = int(Tier.UNTRUSTED) if i % 3 == 0 else int(Tier.TRUSTED)
        eng.admission[slot] = REFUSED if i % 2 else ADMITTED
    score(2, first, [f"k{i}" if i != 4 else "k7" for i in range(10)])  # a4 now has a7's key
    batch = [f"b{j:02d}" for j in range(40)]
    score(3, batch, [f"k{j % 10}" for j in range(40)])
    for j, node_id in enumerate(batch):
        source = "a4" if j % 10 == 7 else f"a{j % 10}"
        want_tier = min(int(eng.tier[eng.index[source]]), int(Tier.PROBATION))
        want_admission = REFUSED if eng.admission[eng.index[source]] == REFUSED else PENDING
        slot = eng.index[node_id]
        assert (int(eng.tier[slot]), int(eng.admission[slot])) == (want_tier, want_admission), node_id
    assert eng.fingerprint_of.get("k7") == eng.index["b37"]


def test_a_departed_nodes_trust_never_reaches_the_node_that_takes_its_table_slot():
    """The engine finds its slots through the node table (no dict of every id): a node
    that leaves is unbound, the node reusing its table slot starts afresh, and the one
    that left comes back (in another table slot) to its own record."""
    from wyneos_core.model import ORIGIN
    from wyneos_core.nodetable import NodeTable
    from wyneos_core.trust.settings import SIGNALS

    table = NodeTable()
    for node_id in ("a", "b", "c"):
        table.add(node_id, registered_at=0.0)
    eng = TrustEngine(settings())
    refused = SIGNALS.index("refusals")

    def tick(number: int, offline: frozenset = frozenset(), refusals: dict | None = None):
        slots = table.slots()
        ids = table.ids_at(slots)
        status = np.array([2 if i in offline else 0 for i in ids], dtype=np.int8)
        eng.score(Evidence(number, ids, status, np.zeros(len(ids), dtype=np.int8), refusals=refusals or {},
                           table=table, table_slots=slots))
        eng.assign({})

    for number in range(1, 8):
        tick(number, frozenset({"b"}), {"b": 3})
    b = eng.index["b"]
    b_trust, b_evidence = float(eng.trust[b]), float(eng.evidence.s[refused, b])
    assert b_evidence > 1 and set(eng.index.detached) == {ORIGIN}     # registered ids: none in a dict
    freed = table.index["b"]
    table.remove("b")
    assert table.add("d", registered_at=1.0) == freed                  # d takes b's table slot
    tick(8)
    d = eng.index["d"]
    assert d != b and eng.evidence.s[refused, d] == 0 and eng.tier[d] == int(Tier.PROBATION)
    assert eng.trust[d] > b_trust
    # kept (detached), forgotten by the tick like every record
    assert eng.index["b"] == b and eng.evidence.s[refused, b] == pytest.approx(b_evidence * 0.9)
    table.add("b", registered_at=2.0)                                   # b comes back elsewhere
    tick(9)
    assert eng.index["b"] == b and eng.evidence.s[refused, b] == pytest.approx(b_evidence * 0.81)
    assert set(eng.index.detached) == {ORIGIN}
    # persisted and restored: every node back by id, bound again through another table
    again = TrustEngine(settings())
    assert persist.restore_chunks(again, persist.encode_chunks(eng, persist.chunks_changed(eng, everything=True))) == 4
    other = NodeTable()
    for node_id in ("d", "b"):
        other.add(node_id, registered_at=0.0)
    slots = other.slots()
    again.score(Evidence(10, other.ids_at(slots), np.zeros(2, dtype=np.int8), np.zeros(2, dtype=np.int8),
                         table=other, table_slots=slots))
    assert again.evidence.s[refused, again.index["b"]] == pytest.approx(b_evidence * 0.729)
    assert set(again.index.detached) == {ORIGIN, "a", "c"}              # restored, not registered here
