"""Both engines against the reference interpreter, on random clusters; durable worker failures."""

from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import pytest

from wyneos_core.model import LicenceResult, Node, NodeStatus
from wyneos_core.rules.durable import DurableEngine, DurableEngineError, DurableUnsupported, translate
from wyneos_core.rules.expr import parse
from wyneos_core.rules.interp import NO_LICENCE, EvalEnv, cluster_summary, evaluate, truthy
from wyneos_core.rules.ir import Not
from wyneos_core.rules.native import NativeEngine
from wyneos_core.rules.runtime import RulesetRunner

KEYS = ["region", "version", "tier", "rack", "gpu", "zone", "tags"]
#: includes the values durable-rules chokes on when sent as themselves
VALUES = [None, 0, 1, 2, 3, 1.0, 2.5, -1, True, False, "", "eu", "us", "eu-west", "2.4.0", "2.3.9", "10.0",
          "v2.4.1", "x.y", "ünï", 'q"uote', "back\\slash", [1, 2], ["eu"], {"a": 1}, ["eu", "us"], [],
          1e-05, 1e20, 5e-324, 2**64, -0.0, float("nan"), float("inf"), "\ud800", "a\x00b", "$and"]
STR_CONSTS = ["eu", "us", "eu-west", "", "2.4.0", "ünï", 'q"uote', "back\\slash", "zz", "$and"]
NUM_CONSTS = [0, 1, 2, 2.5, -1, 1.0, 3, 0.00001, 1e20, 9007199254740992]


def random_cluster(rng: random.Random, size: int, loads: bool = True) -> tuple[list[Node], list[LicenceResult], EvalEnv]:
    nodes, lics = [], []
    now = 10_000.0
    for i in range(size):
        metadata = {k: rng.choice(VALUES) for k in KEYS if rng.random() < 0.65}
        if rng.random() < 0.2:
            metadata["nested"] = {"a": rng.choice(VALUES), "b": {"c": rng.choice(VALUES)}}
        node = Node(
            f"n{i:05d}", rng.choice(list(NodeStatus)),
            last_seen=None if rng.random() < 0.15 else now - rng.uniform(0, 60),
            load=None if rng.random() < 0.15 or not loads else rng.choice([round(rng.uniform(0, 1.2), 3), 1e-05]),
            metadata=metadata, isolated=rng.random() < 0.1,
        )
        nodes.append(node)
        r = rng.random()
        if r < 0.2:
            lics.append(NO_LICENCE)
        else:
            lics.append(LicenceResult(node.id, r > 0.4, rng.choice(["ok", "expired", "invalid_signature"]),
                                      features=tuple(rng.sample(["gpu", "ha", "sso"], rng.randint(0, 3))),
                                      in_grace=rng.random() < 0.2, tier=rng.choice([None, "gold", "free"])))
    env = EvalEnv(now, cluster_summary(nodes, now), {"version-floor": {n.id for n in nodes[::7]}})
    return nodes, lics, env


def random_term(rng: random.Random) -> str:
    return rng.choice([
        f"node.metadata.{rng.choice(KEYS)}", f"node.metadata['{rng.choice(KEYS)}']", "node.load", "node.status",
        "node.id", "node.isolated", "node.last_seen", "heartbeat_age(node)", "licence.reason", "licence.valid",
        "licence.tier", "licence.in_grace", "node.metadata.nested.a", "node.metadata.nested.b.c",
        f"version_at_least(node.metadata.{rng.choice(KEYS)}, '2.4.0')", "matches(node.id, 'n000*')",
        "entitled(licence, 'gpu')", "length(node.metadata.rack)", "cluster.size", "violated('version-floor')",
        "node.metadata.tags[0]", "node.metadata.tags[-1]", "length(node.metadata.tags)", "licence.features[0]",
        "cluster.mean_load", "regex(node.metadata.region, '^eu-[a-z]+$')",
    ])


def random_leaf(rng: random.Random) -> str:
    term = random_term(rng)
    shape = rng.random()
    if shape < 0.55:
        op = rng.choice(["==", "!=", "<", "<=", ">", ">="])
        if op in ("==", "!="):
            const = rng.choice([*map(repr, STR_CONSTS), *map(repr, NUM_CONSTS), "True", "False"])
        else:
            const = rng.choice([*map(repr, STR_CONSTS), *map(repr, NUM_CONSTS)])
        return f"{const} {_flip(op)} {term}" if rng.random() < 0.2 else f"{term} {op} {const}"
    if shape < 0.7:
        items = rng.sample([*map(repr, STR_CONSTS), *map(repr, NUM_CONSTS), "True"], rng.randint(0, 4))
        return f"{term} {'not in' if rng.random() < 0.4 else 'in'} [{', '.join(items)}]"
    if shape < 0.85:
        return f"{term} is {'not ' if rng.random() < 0.5 else ''}missing"
    return term


def _flip(op: str) -> str:
    return {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)


def random_condition(rng: random.Random, depth: int = 0) -> str:
    if depth >= 2 or rng.random() < 0.35:
        return random_leaf(rng)
    r = rng.random()
    if r < 0.2:
        return f"not ({random_condition(rng, depth + 1)})"
    op = "and" if r < 0.6 else "or"
    parts = [random_condition(rng, depth + 1) for _ in range(rng.randint(2, 3))]
    return "(" + f" {op} ".join(parts) + ")"


def reference(conds, nodes, lics, env) -> list[list[int]]:
    return [[i for i, (n, l) in enumerate(zip(nodes, lics)) if truthy(evaluate(c, n, l, env))] for c in conds]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_native_matches_the_reference_interpreter(seed: int) -> None:
    rng = random.Random(seed)
    nodes, lics, env = random_cluster(rng, 600)
    texts = [random_condition(rng) for _ in range(60)]
    conds = [parse(t, "enforcement") for t in texts]
    conds += [Not(c) for c in conds]  # governance rules run as Not(require)
    got = NativeEngine(conds).evaluate(nodes, lics, env)
    want = reference(conds, nodes, lics, env)
    for text, g, w in zip(texts + [f"not ({t})" for t in texts], got, want):
        assert g == w, text


@pytest.mark.slow
def test_durable_and_native_agree_on_random_clusters() -> None:
    """1,200 nodes x 24 independent random rules (and 8 negations, as governance runs
    them), metadata, missing values, edge numbers and strings, two seeds (one with no
    loads, so cluster.mean_load is missing), two ticks."""
    for seed, loads in ((11, True), (12, False)):
        rng = random.Random(seed)
        nodes, lics, env = random_cluster(rng, 1200, loads)
        texts = [random_condition(rng) for _ in range(24)]
        conds = [parse(t, "enforcement") for t in texts]
        conds += [Not(c) for c in conds[:8]]
        names = texts + [f"not ({t})" for t in texts[:8]]
        native = NativeEngine(conds).evaluate(nodes, lics, env)
        assert native == reference(conds, nodes, lics, env)
        durable = DurableEngine(conds, timeout=120)
        try:
            first = durable.evaluate(nodes, lics, env)
            assert sum(map(len, first)) > 1000  # the rules do fire (past 1,024 facts too)
            assert sum(1 for hits in first[:24] if hits) >= 8  # and not only a few of them
            for text, n_hits, d_hits in zip(names, native, first):
                assert d_hits == n_hits, f"seed {seed}: {text}"
            # the next tick (facts retracted and asserted again) gives the same answer
            second = durable.evaluate(nodes, lics, env)
            assert second == first
        finally:
            durable.close()


def test_durable_refuses_what_it_cannot_express() -> None:
    for text, words in [
        ("node.load * 2 > 1", "arithmetic"),
        ("node.load > cluster.mean_load", "two values"),
        ("'gpu' in licence.features", "literal list"),
        ("(node.load > 0.5) == True", "not the result"),
        (" and ".join(f"(node.metadata.{k} == 1 or node.metadata.{k} == 2)" for k in "abcdefghi"), "alternatives"),
    ]:
        with pytest.raises(DurableUnsupported, match=words):
            translate([parse(text)])


def _cluster_for_worker() -> tuple[list[Node], list[LicenceResult], EvalEnv]:
    return random_cluster(random.Random(5), 200)


def test_a_crashed_durable_worker_is_detected_and_restarted() -> None:
    nodes, lics, env = _cluster_for_worker()
    conds = [parse("node.load > 0.5"), parse("node.metadata.region == 'eu'")]
    engine = DurableEngine(conds, timeout=30)
    try:
        want = engine.evaluate(nodes, lics, env)
        assert want == NativeEngine(conds).evaluate(nodes, lics, env)
        pid = engine.pid
        assert pid is not None
        os.kill(pid, signal.SIGSEGV)  # what an upstream segmentation fault looks like from here
        time.sleep(0.2)
        with pytest.raises(DurableEngineError, match="SIGSEGV"):
            engine.evaluate(nodes, lics, env)
        assert engine.evaluate(nodes, lics, env) == want  # a new worker at the next call
        assert engine.pid not in (None, pid)
    finally:
        engine.close()


def test_a_hung_durable_worker_is_killed_after_the_timeout() -> None:
    nodes, lics, env = _cluster_for_worker()
    engine = DurableEngine([parse("node.load > 0.5")], timeout=1.5)
    try:
        engine.evaluate(nodes, lics, env)
        pid = engine.pid
        os.kill(pid, signal.SIGSTOP)  # a worker stuck inside the C extension
        # the stopped worker never answers: the call ends only because the engine kills it
        with pytest.raises(DurableEngineError, match="hung"):
            engine.evaluate(nodes, lics, env)
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
    finally:
        engine.close()


from wyneos_core.rules.expr import MAX_STRING  # noqa: E402


COLUMN_NUMBERS = ["node.load", "node.last_seen", "heartbeat_age(node)", "node.trust", "node.registered_at",
                  "node.last_rollback"]
COLUMN_CODES = ["node.status", "node.isolated", "node.trust_tier", "trust_at_least('trusted')",
                # metadata, dictionary-encoded by the table, and helpers over its values
                "node.metadata.region", "node.metadata['version']", "node.metadata.tags", "node.metadata.gpu",
                "version_at_least(node.metadata.version, '2.4.0')", "version_below(node.metadata.tier, '10')",
                "matches(node.metadata.region, 'eu*')", "regex(node.metadata.rack, '^[0-9]')",
                "length(node.metadata.tags)"]
COLUMN_CONSTS = [*map(repr, NUM_CONSTS), "0.5", "1.0", "-0.0", "1e308", "-1e308", "12.5", "9e15",
                 "9007199254740992", "-9007199254740992", "1e-300", "9007199254740994.0", "1.7976931348623157e308"]
CODE_CONSTS = [*map(repr, STR_CONSTS), "'online'", "'stale'", "'offline'", "'unknown'", "'trusted'",
               "'probation'", "'attested'", "'untrusted'", repr("o" * MAX_STRING)]


def column_leaf(rng: random.Random) -> str:
    """A condition the node table's columns answer: the number columns, the code columns
    and the cluster's values, against literals, each other and literal lists."""
    term = rng.choice([*COLUMN_NUMBERS, *COLUMN_CODES, "cluster.mean_load", "cluster.size"])
    shape = rng.random()
    if shape < 0.55:
        op = rng.choice(["==", "!=", "<", "<=", ">", ">="])
        consts = list(COLUMN_CONSTS)
        if op in ("==", "!=") or term in COLUMN_CODES:
            consts += CODE_CONSTS
        if op in ("==", "!="):
            consts += ["True", "False"]
        const = rng.choice(consts)
        return f"{const} {_flip(op)} {term}" if rng.random() < 0.2 else f"{term} {op} {const}"
    if shape < 0.65:  # two columns, or a column and a cluster value
        op = rng.choice(["==", "!=", "<", "<=", ">", ">="])
        other = rng.choice([*COLUMN_NUMBERS, "cluster.mean_load", "cluster.size", "cluster.now"])
        return f"{term if term in COLUMN_NUMBERS else 'node.load'} {op} {other}"
    if shape < 0.78:
        items = rng.sample([*COLUMN_CONSTS, *CODE_CONSTS, "True", "False"], rng.randint(0, 4))
        return f"{term} {'not in' if rng.random() < 0.4 else 'in'} [{', '.join(items)}]"
    if shape < 0.9:
        return f"{term} is {'not ' if rng.random() < 0.5 else ''}missing"
    return term


def column_condition(rng: random.Random, depth: int = 0) -> str:
    if depth >= 2 or rng.random() < 0.35:
        return column_leaf(rng)
    r = rng.random()
    if r < 0.2:
        return f"not ({column_condition(rng, depth + 1)})"
    op = "and" if r < 0.6 else "or"
    return "(" + f" {op} ".join(column_condition(rng, depth + 1) for _ in range(rng.randint(2, 3))) + ")"


def in_registry(nodes: list[Node]):
    """The same nodes in a registry's node table; its ``nodes()`` (the columns) in the same order."""
    from wyneos_core.config import Config
    from wyneos_core.registry import Registry

    registry = Registry(dict(Config.defaults()["heartbeat"]))
    for n in nodes:
        view = registry.register(n.id, now=n.registered_at, metadata=n.metadata)
        view.status, view.last_seen, view.load, view.isolated = n.status, n.last_seen, n.load, n.isolated
        view.last_rollback, view.trust, view.trust_tier = n.last_rollback, n.trust, n.trust_tier
    return registry.nodes()


def licence_columns(nodes, lics: list[LicenceResult]):
    """``lics`` as the licence step hands them to the rules: ``LicenceResults`` (codes into
    a pool of distinct results) read by the runner by position."""
    from wyneos_core.licensing.results import LicenceResults, ResultPool
    from wyneos_core.rules.runtime import _Licences

    pool = ResultPool()
    codes = np.array([pool.add(lic) for lic in lics], np.int64)
    results = LicenceResults(nodes.ids(), nodes.slots, nodes.table.born[nodes.slots], codes, pool, None)
    wrapped = _Licences(nodes.ids(), results.mapping(), nodes)
    assert wrapped.columns() is not None
    return wrapped


def with_table_fields(rng: random.Random, nodes: list[Node]) -> list[Node]:
    """The nodes with trust, tier, registration and rollback times (some missing, some
    extreme), loads and heartbeats as large as a float holds."""
    tiers = [None, "untrusted", "probation", "trusted", "attested"]
    for n in nodes:
        n.trust = rng.choice([None, 0.0, 0.25, 0.5, 0.8, 1.0, -0.0])
        n.trust_tier = rng.choice(tiers)
        n.registered_at = rng.choice([0.0, 9_000.0, 9_999.5, 1e308, -1e308, float("nan")])
        n.last_rollback = rng.choice([None, None, 9_990.0, 1e308])
        if rng.random() < 0.05:
            n.load = rng.choice([1e308, -1e308, float(2**63), 0.0])
        if rng.random() < 0.03:
            n.last_seen = rng.choice([1e308, -1e308])
    return nodes


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_the_columns_answer_as_the_reference_interpreter(seed: int) -> None:
    """Conditions over the node table (vector masks where the columns can, closures for
    the rest), on random nodes with missing loads and heartbeats, huge and long constants."""
    from wyneos_core.rules.vector import Columns, compile_mask

    rng = random.Random(seed)
    nodes, lics, _ = random_cluster(rng, 700)
    table_nodes = in_registry(with_table_fields(rng, nodes))
    env = RulesetRunner.environment(table_nodes, 10_000.0)
    texts = [column_condition(rng) for _ in range(90)] + [random_condition(rng) for _ in range(20)]
    conds = [parse(t, "enforcement") for t in texts]
    conds += [Not(c) for c in conds]
    names = texts + [f"not ({t})" for t in texts]
    assert sum(compile_mask(c) is not None for c in conds) >= 160  # most run over the columns
    got = NativeEngine(conds).evaluate(table_nodes, lics, env)
    assert sum(map(len, got)) > 20_000  # the conditions do hold on many nodes
    want = reference(conds, list(table_nodes), lics, env)
    for text, g, w in zip(names, got, want):
        assert g == w, text
    # the licence step's results as columns (a pool of distinct results), as the tick hands them over
    licences = licence_columns(table_nodes, lics)
    cols = Columns(table_nodes.table, table_nodes.slots, licences)
    on_metadata = on_licence = 0
    for text, cond, w in zip(names, conds, want):  # each mask itself (none left to the closures)
        mask = compile_mask(cond)
        if mask is not None:
            assert np.flatnonzero(mask(cols, env)).tolist() == w, text
            on_metadata += "metadata" in text
            on_licence += "licence" in text
    assert on_metadata >= 30 and on_licence >= 6
    got = NativeEngine(conds).evaluate(table_nodes, licences, env)
    for text, g, w in zip(names, got, want):
        assert g == w, text
    some = table_nodes[1::3]  # not the first slots in order: the columns gathered, not viewed
    got = NativeEngine(conds).evaluate(some, lics[1::3], env)
    want = reference(conds, list(some), lics[1::3], env)
    for text, g, w in zip(names, got, want):
        assert g == w, text


def test_a_number_column_against_any_number_compares_as_python_does() -> None:
    """Integers no float equals (past 2**53, past 2**63, past the float range), NaN and
    infinities, on both sides: the column's answer is ``compare``'s for every pair."""
    from wyneos_core.nodetable import NodeTable
    from wyneos_core.rules.interp import compare
    from wyneos_core.rules.vector import Columns, compile_mask

    values = [0.0, -0.0, 1.0, 2.0**53, 2.0**53 + 2, 2.0**63, -2.0**63, 2.0**64, 1e308, -1e308, float("inf"),
              float("-inf"), 1.7976931348623157e308, 0.5, float("nan")]
    table = NodeTable()
    for i, v in enumerate(values):
        table.add(f"n{i}", registered_at=v)  # a present NaN there: never missing
    slots = table.slots()
    consts = [0, 1, 2**53 + 1, 2**53 + 3, 2**63, 2**63 + 1, -2**63 - 1, 2**64 + 1, 10**400, -10**400, 2**1024 - 1,
              float("inf"), float("nan"), 0.5, True, "1.0", None]
    checked = 0
    for op in ("==", "!=", "<", "<=", ">", ">="):
        mask = compile_mask(parse(f"node.registered_at {op} cluster.mean_load"))
        for c in consts:
            got = mask(Columns(table, slots), EvalEnv(0.0, {"mean_load": c})).tolist()
            want = [compare(op, v, c) for v in values]
            assert got == want, (op, c)
            checked += sum(want)
    assert checked > 200


def test_a_cluster_value_of_none_is_missing_over_the_columns() -> None:
    from wyneos_core.nodetable import NodeTable
    from wyneos_core.rules.interp import truthy
    from wyneos_core.rules.vector import Columns, compile_mask

    table = NodeTable()
    node = Node("n0", load=0.5)
    table.add("n0", registered_at=0.0)
    table.load[0] = 0.5
    env = EvalEnv(0.0, {"mean_load": None})
    for text in ("cluster.mean_load is missing", "cluster.mean_load is not missing", "cluster.mean_load",
                 "node.load != cluster.mean_load", "not cluster.mean_load"):
        cond = parse(text)
        want = truthy(evaluate(cond, node, NO_LICENCE, env))
        assert compile_mask(cond)(Columns(table, table.slots()), env).tolist() == [want], text
