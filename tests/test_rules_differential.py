"""The vector engine against durable-rules, the per-node reference, tick after tick.

Random governance rulesets (conditions over the columns and over metadata, licences and
helpers, with random ``for`` and ``keep_firing_for``) run on random nodes in a registry
twice: once on the native engine (masks over the node table where the columns answer,
closures for the rest) and once on durable-rules (one fact per node, in its worker).
Between ticks nodes change, leave and join (a joining node takes a freed slot), so
every (rule, node) state, counter included, must agree, and must be what a per-node
state machine written from the docs gives. Values include NaN, missing fields, numbers
as large as a float holds, integers past 2**63 and 64 KiB strings.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
from test_rules_engines import (
    COLUMN_CODES,
    COLUMN_CONSTS,
    CODE_CONSTS,
    COLUMN_NUMBERS,
    random_condition,
)

from wyneos_core.config import Config
from wyneos_core.model import LicenceResult, NodeStatus
from wyneos_core.registry import Registry
from wyneos_core.rules.expr import parse
from wyneos_core.rules.interp import NO_LICENCE, evaluate, truthy
from wyneos_core.rules.ir import Not
from wyneos_core.rules.loader import load_ruleset
from wyneos_core.rules.runtime import RulesetRunner
from wyneos_core.rules.vector import compile_mask

LONG = "x" * 65536
#: metadata values: NaN, huge numbers, integers past 2**63, 64 KiB strings, nested data
VALUES = [None, 0, 1, 2.5, -1, True, False, "", "eu", "us", "2.4.0", "2.3.9", LONG, LONG[:-1] + "y", float("nan"),
          1e308, -1e308, float("inf"), 2**63, 2**63 + 1, -2**63 - 1, 2**64 + 7, 10**30, 9007199254740993,
          [1, 2], ["eu"], {"a": 1}, "\ud800", "a\x00b"]
KEYS = ["region", "version", "tier", "rack", "gpu", "zone", "tags"]
DURATIONS = [0, "1 tick", "2 ticks", "3 ticks"]
NOW = 10_000.0


def durable_leaf(rng: random.Random) -> str:
    """A condition on the columns that durable-rules can express (a term against a
    literal or a literal list, ``is missing``, truthiness: no two fields compared)."""
    term = rng.choice([*COLUMN_NUMBERS, *COLUMN_CODES, "cluster.mean_load", "cluster.size"])
    shape = rng.random()
    if shape < 0.6:
        op = rng.choice(["==", "!=", "<", "<=", ">", ">="])
        consts = list(COLUMN_CONSTS) + (CODE_CONSTS if op in ("==", "!=") or term in COLUMN_CODES else [])
        return f"{term} {op} {rng.choice(consts + (['True', 'False'] if op in ('==', '!=') else []))}"
    if shape < 0.75:
        items = rng.sample([*COLUMN_CONSTS, *CODE_CONSTS, "True"], rng.randint(0, 4))
        return f"{term} {'not in' if rng.random() < 0.4 else 'in'} [{', '.join(items)}]"
    if shape < 0.9:
        return f"{term} is {'not ' if rng.random() < 0.5 else ''}missing"
    return term


def durable_condition(rng: random.Random, depth: int = 0) -> str:
    if depth >= 2 or rng.random() < 0.4:
        return durable_leaf(rng) if rng.random() < 0.75 else random_condition(rng, 2)
    r = rng.random()
    if r < 0.2:
        return f"not ({durable_condition(rng, depth + 1)})"
    op = "and" if r < 0.6 else "or"
    return "(" + f" {op} ".join(durable_condition(rng, depth + 1) for _ in range(rng.randint(2, 3))) + ")"


def set_fields(rng: random.Random, view) -> None:
    """Random values for every column and the metadata of one registered node."""
    view.status = rng.choice(list(NodeStatus))
    view.load = rng.choice([None, 0.0, 0.25, 0.9, 1.2, 1e308, -1e308, float(2**63), float("nan"), -0.0])
    view.last_seen = rng.choice([None, NOW - 5, NOW - 40, NOW, 1e308, -1e308])
    view.isolated = rng.random() < 0.15
    view.trust = rng.choice([None, 0.0, 0.5, 0.8, 1.0, float("nan")])
    view.trust_tier = rng.choice([None, "untrusted", "probation", "trusted", "attested"])
    view.last_rollback = rng.choice([None, None, NOW - 100, 1e308])
    view.metadata = {k: rng.choice(VALUES) for k in KEYS if rng.random() < 0.6}


def join(rng: random.Random, registry: Registry, node_id: str) -> None:
    view = registry.register(node_id, now=rng.choice([0.0, NOW - 500, 1e308, -1e308, float("nan")]))
    set_fields(rng, view)


def licences_for(rng: random.Random, ids: list[str]) -> dict[str, LicenceResult]:
    out = {}
    for node_id in ids:
        if rng.random() < 0.8:
            out[node_id] = LicenceResult(node_id, rng.random() < 0.6, rng.choice(["ok", "expired"]),
                                         features=tuple(rng.sample(["gpu", "ha", "sso"], rng.randint(0, 2))),
                                         tier=rng.choice([None, "gold", LONG]))
    return out


def licence_results(nodes, lics: dict[str, LicenceResult]):
    from wyneos_core.licensing.results import LicenceResults, ResultPool

    pool = ResultPool()
    codes = np.array([pool.add(lics.get(i) or NO_LICENCE) for i in nodes.ids()], np.int64)
    return LicenceResults(nodes.ids(), nodes.slots, nodes.table.born[nodes.slots], codes, pool, None)


def ruleset_of(tmp_path: Path, rng: random.Random, count: int):
    """A governance ruleset of ``count`` random rules (parsed as written, not strictly:
    conditions that can never hold are part of the test)."""
    lines = ["ruleset: differential", "stage: governance", "rules:"]
    for i in range(count):
        lines += [f"  - id: r{i:02d}", "    description: random", "    require: node.id is not missing",
                  f"    for: {rng.choice(DURATIONS)!r}", f"    keep_firing_for: {rng.choice(DURATIONS)!r}",
                  "    message: failed"]
    path = tmp_path / "differential.yaml"
    path.write_text("\n".join(lines) + "\n")
    base = load_ruleset(path)
    texts = [durable_condition(rng) for _ in range(count)]
    rules = []
    for rule, text in zip(base.rules, texts):
        cond = parse(text, "governance")
        rules.append(dataclasses.replace(rule, source=text, condition=cond, active=Not(cond)))
    return dataclasses.replace(base, rules=tuple(rules)), texts


class Reference:
    """The rule state machine of docs/rulesets.md, node by node, in ticks."""

    def __init__(self, rules) -> None:
        self.rules = rules
        self.states: dict[tuple[str, str], list] = {}  # (rule, node) -> [state, since tick]

    def step(self, ids, values, tick: int) -> dict[tuple[str, str], str]:
        present = set(ids)
        for key in [k for k in self.states if k[1] not in present]:
            del self.states[key]  # the node left: its state ends with it
        for rule, active in zip(self.rules, values):
            for node_id, on in zip(ids, active):
                key = (rule.id, node_id)
                st = self.states.get(key)
                if on:
                    if st is None or st[0] == "resolved":
                        st = self.states[key] = ["pending", tick]
                    if st[0] == "firing":
                        st[1] = None
                    elif tick - st[1] >= rule.for_.amount:
                        st[0], st[1] = "firing", None
                elif st is not None:
                    if st[0] in ("pending", "resolved"):
                        del self.states[key]
                    else:
                        if st[1] is None:
                            st[1] = tick
                        if tick - st[1] >= rule.keep_firing_for.amount:
                            st[0] = "resolved"
        return {k: st[0] for k, st in self.states.items()}


@pytest.mark.parametrize("seed", [31, 32])
def test_the_vector_engine_and_durable_rules_agree_tick_after_tick(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    registry = Registry({**Config.defaults()["heartbeat"], "max_nodes": 1000})
    serial = 0
    for serial in range(150):
        join(rng, registry, f"n{serial:04d}")
    ruleset, texts = ruleset_of(tmp_path, rng, 20)
    assert sum(compile_mask(r.active) is not None for r in ruleset.rules) >= 8  # many run over the columns
    native = RulesetRunner.from_rulesets([ruleset])
    durable = RulesetRunner.from_rulesets([dataclasses.replace(ruleset, engine="durable")])
    reference = Reference(ruleset.rules)
    seen_states: set[str] = set()
    try:
        for tick in range(1, 7):
            if tick > 1:  # some nodes change, some leave, as many join (into the freed slots)
                ids = registry.ids()
                for node_id in rng.sample(ids, 12):
                    registry.deregister(node_id)
                for _ in range(12):
                    serial += 1
                    join(rng, registry, f"n{serial:04d}")
                for node_id in rng.sample(registry.ids(), 40):
                    set_fields(rng, registry.get(node_id))
            nodes = registry.nodes()
            lics = licences_for(rng, nodes.ids())
            if tick % 2:  # as the licence step hands them over: columns of a pool of distinct results
                lics = licence_results(nodes, lics).mapping()
            env = RulesetRunner.environment(nodes, NOW)
            got = {}
            for name, runner in (("native", native), ("durable", durable)):
                errors: list = []
                transitions: list = []
                results = runner.governance(nodes, lics, tick=tick, env=env, transitions=transitions, errors=errors)
                assert errors == [], errors  # durable-rules itself answered (no fallback)
                got[name] = ({(r.rule_id, r.node_id): r.state for r in results}, dict(results.passed_counts),
                             sorted((t["rule_id"], t["node_id"], t["from"], t["to"]) for t in transitions))
            assert got["native"] == got["durable"], f"seed {seed}, tick {tick}"
            views = list(nodes)
            lic_list = [lics.get(i) or NO_LICENCE for i in nodes.ids()]
            values = [[truthy(evaluate(r.active, n, l, env)) for n, l in zip(views, lic_list)] for r in ruleset.rules]
            want = reference.step(nodes.ids(), values, tick)
            states = got["native"][0]
            for (rule_id, node_id), state in want.items():
                assert states.get((rule_id, node_id)) == state, (texts[int(rule_id[1:])], node_id, tick)
            assert set(states) == set(want)
            seen_states.update(want.values())
    finally:
        native.close()
        durable.close()
    assert seen_states == {"pending", "firing", "resolved"}  # every state was reached
