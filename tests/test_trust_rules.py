"""Rules reading node.trust, node.trust_tier and trust_at_least(): native, durable-rules
and the reference interpreter give the same results on random clusters."""

from __future__ import annotations

import random

import pytest

from test_rules_engines import random_cluster, random_condition, reference
from wyneos_core.rules.durable import DurableEngine
from wyneos_core.rules.expr import ExprError, parse
from wyneos_core.rules.ir import Not
from wyneos_core.rules.native import NativeEngine
from wyneos_core.trust.tiers import TIER_NAMES

TRUST_VALUES = [None, 0.0, 0.2, 0.25, 0.35, 0.5, 0.599999, 0.6, 0.7, 0.85, 1.0]
TIERS = [None, *TIER_NAMES]


def trust_leaf(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.3:
        op = rng.choice(["<", "<=", ">", ">=", "==", "!="])
        return f"node.trust {op} {rng.choice([0, 0.25, 0.5, 0.6, 0.7, 1, 1.0])}"
    if r < 0.55:
        return f"trust_at_least({rng.choice(TIER_NAMES)!r})"
    if r < 0.75:
        op = rng.choice(["==", "!="])
        return f"node.trust_tier {op} {rng.choice([*TIER_NAMES, 'gold'])!r}"
    if r < 0.85:
        items = rng.sample(TIER_NAMES, rng.randint(1, 3))
        return f"node.trust_tier {'not in' if rng.random() < 0.4 else 'in'} {items!r}"
    return f"node.trust is {'not ' if rng.random() < 0.5 else ''}missing"


def trust_condition(rng: random.Random) -> str:
    parts = [trust_leaf(rng) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.5:
        parts.append(random_condition(rng, 1))
    op = rng.choice(["and", "or"])
    text = f" {op} ".join(f"({p})" for p in parts)
    return f"not ({text})" if rng.random() < 0.2 else text


def trust_cluster(rng: random.Random, size: int):
    nodes, lics, env = random_cluster(rng, size)
    for node in nodes:
        node.trust = rng.choice(TRUST_VALUES)
        node.trust_tier = None if node.trust is None else rng.choice(TIERS)
    return nodes, lics, env


@pytest.mark.parametrize("seed", [5, 6])
def test_native_matches_the_reference_on_trust_rules(seed: int) -> None:
    rng = random.Random(seed)
    nodes, lics, env = trust_cluster(rng, 500)
    texts = [trust_condition(rng) for _ in range(50)]
    conds = [parse(t, "enforcement") for t in texts]
    conds += [Not(c) for c in conds]
    got = NativeEngine(conds).evaluate(nodes, lics, env)
    want = reference(conds, nodes, lics, env)
    for text, g, w in zip(texts + [f"not ({t})" for t in texts], got, want):
        assert g == w, text
    assert sum(1 for hits in want if hits) > 20  # the rules do fire


@pytest.mark.slow
def test_durable_and_native_agree_on_trust_rules() -> None:
    rng = random.Random(21)
    nodes, lics, env = trust_cluster(rng, 800)
    texts = [trust_condition(rng) for _ in range(20)]
    texts += ['trust_at_least("trusted")', 'node.trust >= 0.6 and node.trust_tier == "probation"',
              'not trust_at_least("probation")', 'node.trust_tier in ["trusted", "attested"]']
    conds = [parse(t, "enforcement") for t in texts]
    conds += [Not(c) for c in conds[:6]]
    names = texts + [f"not ({t})" for t in texts[:6]]
    native = NativeEngine(conds).evaluate(nodes, lics, env)
    assert native == reference(conds, nodes, lics, env)
    durable = DurableEngine(conds, timeout=120)
    try:
        got = durable.evaluate(nodes, lics, env)
    finally:
        durable.close()
    for text, n_hits, d_hits in zip(names, native, got):
        assert d_hits == n_hits, text
    # the fixed ones: exactly the nodes whose tier is trusted or attested, etc.
    at_least_trusted = [i for i, n in enumerate(nodes) if n.trust_tier in ("trusted", "attested")]
    assert got[texts.index('trust_at_least("trusted")')] == at_least_trusted
    assert got[texts.index('node.trust_tier in ["trusted", "attested"]')] == at_least_trusted
    assert got[texts.index('not trust_at_least("probation")')] == [
        i for i, n in enumerate(nodes) if n.trust_tier in (None, "untrusted")]


def test_trust_at_least_refuses_an_unknown_tier_at_load_time() -> None:
    with pytest.raises(ExprError, match="'gold' is not a trust tier"):
        parse('trust_at_least("gold")')
    with pytest.raises(ExprError, match="string literal|constant|literal"):
        parse("trust_at_least(node.trust_tier)")


@pytest.mark.parametrize("engine", ["native", "durable"])
def test_a_ruleset_test_file_can_give_nodes_a_trust_and_a_tier(tmp_path, engine):
    from wyneos_core.rules.testing import run_test_file

    (tmp_path / "gates.yaml").write_text(
        "ruleset: gates\nstage: enforcement\nrules:\n"
        "  - id: quarantine-untrusted\n    description: untrusted nodes are quarantined\n    when: not trust_at_least('probation') or node.trust < 0.2\n"
        "    then: [{quarantine: {}}]\n")
    (tmp_path / "gates_test.yaml").write_text(
        "ruleset: gates.yaml\ntests:\n  - name: untrusted nodes are quarantined\n    nodes:\n"
        "      - {id: bad, trust: 0.1, trust_tier: untrusted}\n"
        "      - {id: new, trust: 0.4, trust_tier: probation}\n"
        "      - {id: never-scored}\n"
        "    expect:\n      actions:\n        - {type: quarantine, target: bad}\n"
        "        - {type: quarantine, target: never-scored}\n")
    _, outcomes = run_test_file(tmp_path / "gates_test.yaml", engine=engine)
    assert [o.passed for o in outcomes] == [True], [o.failures for o in outcomes]
