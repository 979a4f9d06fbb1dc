"""Values and rulesets at the edges: numbers and strings durable-rules chokes on, the
limits of its C extension, a durable engine that keeps failing, hostile reloads, ReDoS."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import beat, config_from
from wyneos_core.builtin.rulesets import runner_of
from wyneos_core.cli import main
from wyneos_core.model import Node
from wyneos_core.rules import helpers
from wyneos_core.rules.durable import DurableEngine, rank_code
from wyneos_core.rules.expr import ExprError, parse
from wyneos_core.rules.interp import NO_LICENCE, EvalEnv, cluster_summary, evaluate, truthy
from wyneos_core.rules.loader import RulesetError, load_ruleset, start_durable
from wyneos_core.rules.native import NativeEngine
from wyneos_core.rules.runtime import RulesetRunner
from wyneos_core.tick import Orchestrator

#: values that broke durable-rules when sent as themselves (JSON exponent forms without a
#: point, beyond 2**53, non-finite, lone surrogates, NUL, operator-looking strings)
EDGE_VALUES = [1e-05, 1e-07, 5e-324, 1e16, 1e20, 1.5e-05, 2**53 + 1, 2**64, 10**30, -0.0, 0.0, 0, 3, 3.0,
               float("nan"), float("inf"), float("-inf"), 0.1 + 0.2, "\ud800", "a\x00b", "$and", "é", "e\u0301",
               "a" * 3000, "", "1e-05", True, False, None, [1e-05], {"x": 1e20}]
EDGE_CONDITIONS = [
    "node.metadata.x > 0.00001", "node.metadata.x == 0.00001", "node.metadata.x < 1e20", "node.metadata.x >= 1e16",
    "node.metadata.x != 3", "node.metadata.x == 3", "node.metadata.x <= 5e-324", "node.metadata.x > 9007199254740992",
    "node.metadata.x == 0", "node.metadata.x < 0", "node.metadata.x in [0.00001, 1e20, 'é', '$and']",
    "node.metadata.x not in [3, 'a']", "node.metadata.x >= 'a'", "node.metadata.x == '$and'",
    "node.metadata.x < 'b'", "not (node.metadata.x < 1e-06)", "node.metadata.x", "node.metadata.x is missing",
    "node.load > 0.00001", "node.load == 0.00001", "length(node.metadata.x) > 2000",
]


def _edge_cluster() -> tuple[list[Node], EvalEnv]:
    nodes = [Node(f"n{i:02d}", load=v if type(v) is float and math.isfinite(v) else 0.5, metadata={"x": v})
             for i, v in enumerate(EDGE_VALUES)]
    return nodes, EvalEnv(100.0, cluster_summary(nodes, 100.0))


def test_rank_codes_order_like_python() -> None:
    table = [-1, 0.00001, 2.5, 9007199254740992]
    for v in [-2, -1, 0, 0.00001, 1e-07, 2.5, 3, 2**53, 2**53 + 1, float("inf"), float("-inf")]:
        for k, c in enumerate(table):
            code, lit = rank_code(table, v), 2 * k + 1
            assert (code < lit) == (v < c) and (code == lit) == (v == c) and (code > lit) == (v > c), (v, c)


@pytest.mark.slow
def test_durable_agrees_with_native_on_edge_values_and_literals() -> None:
    nodes, env = _edge_cluster()
    lics = [NO_LICENCE] * len(nodes)
    conds = [parse(t, "enforcement") for t in EDGE_CONDITIONS]
    native = NativeEngine(conds).evaluate(nodes, lics, env)
    reference = [[i for i, n in enumerate(nodes) if truthy(evaluate(c, n, NO_LICENCE, env))] for c in conds]
    assert native == reference
    engine = DurableEngine(conds, timeout=60)
    try:
        got = engine.evaluate(nodes, lics, env)
        for text, n_hits, d_hits in zip(EDGE_CONDITIONS, native, got):
            assert d_hits == n_hits, text
        assert got[0]  # the rules do fire on these values
        facts = engine.facts(nodes, lics, env)
        assert all(type(v) is int or v in ("true", "false") for f in facts for v in f.values())
    finally:
        engine.close()


def test_a_load_of_ten_microunits_reaches_the_durable_engine() -> None:
    nodes = [Node("idle", load=0.00001), Node("busy", load=0.95)]
    env = EvalEnv(100.0, cluster_summary(nodes, 100.0))
    engine = DurableEngine([parse("node.load > 0.9"), parse("node.load < 0.0001")], timeout=30)
    try:
        assert engine.evaluate(nodes, [NO_LICENCE] * 2, env) == [[1], [0]]
    finally:
        engine.close()


def _ruleset(tmp_path: Path, rules: list[str], *, engine: str = "durable", name: str = "big") -> Path:
    body = "".join(f"  - id: r{i}\n    description: rule {i}\n    when: {text}\n    then: [{{isolate: {{}}}}]\n"
                   for i, text in enumerate(rules))
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"ruleset: {name}\nstage: enforcement\nengine: {engine}\nrules:\n{body}")
    return path


@pytest.mark.slow
def test_rulesets_past_durable_rules_own_limits_run_and_agree(tmp_path: Path) -> None:
    """130 four-way 'or' rules (error 107 in one durable-rules ruleset) and 520 single
    comparisons (a hang past 512 rules) load, run and agree with native."""
    four = [f"node.metadata.k{i} == 'a' or node.metadata.k{i} == 1 or node.metadata.k{i} == True "
            f"or node.metadata.k{i} is missing" for i in range(130)]
    nodes = [Node(f"n{j}", metadata={f"k{i}": ["a", 1, True, 2.5][(i + j) % 4] for i in range(130)})
             for j in range(8)]
    env = EvalEnv(0.0, cluster_summary(nodes, 0.0))
    for texts in (four, [f"node.metadata.k{i % 20} == {i % 7}" for i in range(490)]):
        ruleset = load_ruleset(_ruleset(tmp_path, texts))
        engine = start_durable(ruleset)
        try:
            got = engine.evaluate(nodes, [NO_LICENCE] * 8, env)
        finally:
            engine.close()
        assert got == NativeEngine(ruleset.conditions()).evaluate(nodes, [NO_LICENCE] * 8, env)
        assert sum(map(len, got)) > 100


def test_a_rule_durable_rules_refuses_is_refused_at_load_with_its_line(tmp_path: Path, capsys) -> None:
    long_ne = " or ".join(f"node.metadata.a{w} != 1" for w in range(24))  # durable-rules error 113
    path = _ruleset(tmp_path, ["node.load > 0.9", long_ne])
    ruleset = load_ruleset(path)  # the translation itself is fine...
    with pytest.raises(RulesetError) as info:
        start_durable(ruleset)  # ...but durable-rules will not build it
    err = info.value
    assert err.line == ruleset.rules[1].line and err.field == "rules[1].when"
    assert "113" in str(err) and "expression limit" in str(err) and "engine: native" in str(err)
    assert main(["check", str(path)]) == 1
    assert f"{path}:{ruleset.rules[1].line}:" in capsys.readouterr().err
    native = _ruleset(tmp_path, ["node.load > 0.9", long_ne], engine="native", name="fine")
    assert main(["check", str(native)]) == 0
    assert main(["check", "--engine", "durable", str(native)]) == 1
    with pytest.raises(RulesetError, match="113"):
        RulesetRunner([str(path)])  # startup refuses it too
    too_many = _ruleset(tmp_path, ["node.load > 0.5"] * 501, name="many")
    with pytest.raises(RulesetError, match="more than the 500"):
        load_ruleset(too_many)


NODES = """
heartbeat: {interval: 5, stale_after: 15, offline_after: 40, max_clock_skew: 30}
mesh: {topology: ring, origin_links: 2, seed: 1}
plugins: {disable: [licence, governance, healing, enforcement]}
nodes:
  - {id: n01}
  - {id: n02}
  - {id: n03}
"""

GOV = """\
ruleset: g
stage: governance
rules:
  - id: cool
    description: load below 0.9
    require: node.load < 0.9
"""

HEAL = """\
ruleset: h
stage: healing
rules:
  - id: crowd
    description: acts while the cluster is bigger than two nodes
    when: cluster.size > 2
    then: [{recover: {}}]
"""


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.slow
def test_a_durable_engine_that_keeps_failing_rests_and_native_runs(clock, tmp_path: Path) -> None:
    _write(tmp_path / "g.yaml", GOV)
    # every evaluation runs past its time limit: the worker is killed at every try
    config = config_from(NODES, rulesets={"paths": [str(tmp_path / "g.yaml")], "engine": "durable",
                                          "durable_timeout": 1e-6})
    with Orchestrator(config, clock=clock, load_entrypoints=False, store=False) as orch:
        loaded = next(iter(runner_of(orch.pm).loaded.values()))
        assert loaded.engine.pid  # loaded into its worker at startup
        errors: list[list[str]] = []
        for _ in range(6):
            beat(orch, clock, "n01", "n02", "n03", load=0.95)
            r = orch.tick()
            clock.advance(5)
            assert r.rule_summary["cool"] == {"passed": 0, "failed": 3}  # native answered every tick
            errors.append([e.error for e in r.errors if e.kind == "engine"])
    assert all(len(e) == 1 for e in errors)
    assert "did not answer" in errors[0][0] and "rests until" not in errors[1][0]
    assert "rests until tick" in errors[2][0]  # the third failure in a row
    assert "failed 3 ticks in a row" in errors[3][0]  # resting: native only, no new worker
    assert "did not answer" in errors[4][0] and "rests until" in errors[4][0]  # tried again, rests longer
    assert "failed 4 ticks in a row" in errors[5][0]


@pytest.mark.parametrize("bad", ["labels", "rules"])
def test_hot_reload_refuses_deeply_nested_yaml_and_the_tick_goes_on(clock, tmp_path: Path, bad: str) -> None:
    gov, heal = tmp_path / "g.yaml", tmp_path / "h.yaml"
    _write(gov, GOV)
    _write(heal, HEAL)
    config = config_from(NODES, rulesets={"paths": [str(gov), str(heal)]})
    with Orchestrator(config, clock=clock, load_entrypoints=False, store=False) as orch:
        beat(orch, clock, "n01", "n02", "n03", load=0.95)
        r = orch.tick()
        assert r.rule_summary["cool"]["failed"] == 3 and len(r.proposed) == 3
        nested = "[" * 5000 + "]" * 5000
        _write(gov, GOV + f"labels: {nested}\n" if bad == "labels" else GOV.replace("rules:\n", f"rules: {nested}\n#"))
        refused_notes = 0
        ended = []
        for tick in range(3):
            clock.advance(5)
            ids = ["n01", "n02"] if tick else ["n01", "n02", "n03"]
            if tick == 1:
                orch.registry.deregister("n03")
            beat(orch, clock, *ids, load=0.95)
            r = orch.tick()
            refused_notes += len([n for n in r.notes if "invalid edit" in n])
            assert r.rule_summary["cool"]["failed"] == len(ids)  # the last good version kept running
            # healing saw this tick's cluster, not the last one's
            assert len([a for a in r.proposed if a.type == "recover"]) == (3 if len(ids) == 3 else 0)
            ended += [t for t in r.transitions if t["node_id"] == "n03"]
        assert refused_notes == 1  # refused once, not re-parsed every tick
        # the states of the node that left end in the report instead of vanishing
        assert {(t["rule_id"], t["from"], t["to"]) for t in ended} == {("cool", "firing", "resolved"),
                                                                      ("crowd", "firing", "resolved")}


def test_regex_runs_in_linear_time_and_refuses_backreferences() -> None:
    matcher = helpers.regex_matcher("^(a+)+$")
    assert type(helpers.compile_regex("^(a+)+$")).__module__.startswith("re2")
    assert matcher("a" * 5000 + "!") is False  # exponential for a backtracking engine
    assert matcher("aaaa") is True
    assert matcher("\ud800a") is False and helpers.regex_matcher("a$")("\ud800a") is True
    assert matcher("a" * (helpers.MAX_MATCH_LENGTH + 1)) is helpers.MISSING
    for pattern, words in [(r"(a)\\1", "backreferences"), (r"(?P<n>a)(?P=n)", "backreferences"),
                           (r"(?=a)b", "lookahead"), (r"(?<!a)b", "lookahead"), ("[", "missing ]")]:
        with pytest.raises(ExprError, match=words):
            parse(f'regex(node.id, "{pattern}")')
