"""The prediction and drift helpers in the rule language, on both engines."""

from __future__ import annotations

import random

import pytest

from predict_helpers import LinePredictions
from wyneos_core.model import Node, NodeStatus
from wyneos_core.predict.interface import Predictions
from wyneos_core.rules.durable import DurableEngine
from wyneos_core.rules.expr import ExprError, parse
from wyneos_core.rules.interp import NO_LICENCE, EvalEnv, evaluate, explain, truthy
from wyneos_core.rules.ir import MISSING, Const
from wyneos_core.rules.native import NativeEngine

NOW = 100_000.0


def fleet(rng: random.Random, size: int = 40) -> tuple[list[Node], LinePredictions, dict]:
    nodes = [Node(f"n{i:03d}", NodeStatus.ONLINE, last_seen=NOW) for i in range(size)]
    series: dict = {}
    for node in nodes:
        for metric in ("disk_used", "cpu", "memory"):
            if rng.random() < 0.15:
                continue  # never reported
            start, slope = rng.uniform(0.2, 0.9), rng.choice([0.0, 1e-5, 5e-5, -2e-5, 2e-4])
            points = [(NOW - 600 + 60 * k, start + slope * 60 * k + rng.gauss(0, 0.003)) for k in range(10)]
            if rng.random() < 0.2:
                points.append((NOW, points[-1][1] + rng.choice([0.3, -0.3])))  # a spike
            series[(node.id, metric)] = points
    drift = {}
    for node in nodes[::3]:
        drift[node.id] = {"state": rng.choice(["unexplained", "intended", "repaired", "in_sync"]),
                          "fields": ["version"], "since": NOW - rng.choice([30, 600, 4000])}
    return nodes, LinePredictions(series), drift


CONDITIONS = [
    'forecast(node.metrics.disk_used, "1h") > 0.95',
    'time_to(node.metrics.disk_used, 1.0) < "2h"',
    'time_to(node.metrics.disk_used, 1.0) >= 600',
    "anomaly(node.metrics.cpu) > 0.9",
    "trend(node.metrics.memory) > 0",
    "node.metrics.cpu >= 0.5 and not anomaly(node.metrics.cpu) > 0.5",
    "node.metrics.memory is missing",
    'node.drift.state == "unexplained"',
    'node.drift.fields[0] == "version"',
    'drift_age() > "15m"',
    "drift_age() is not missing",
    'forecast(node.metrics.cpu, "30m") <= 0.2 or trend(node.metrics.cpu) < 0',
]


def test_the_interface_is_the_one_detect_implements() -> None:
    assert isinstance(LinePredictions({}), Predictions)


@pytest.mark.parametrize("engine", ["native", "durable"])
def test_engines_agree_with_the_reference_interpreter(engine: str) -> None:
    rng = random.Random(20)
    nodes, predictions, drift = fleet(rng)
    env = EvalEnv(NOW, {}, {}, predictions, drift)
    conditions = [parse(c) for c in CONDITIONS]
    lics = [NO_LICENCE] * len(nodes)
    if engine == "native":
        got = NativeEngine(conditions).evaluate(nodes, lics, env)
    else:
        durable = DurableEngine(conditions, timeout=60)
        try:
            got = durable.evaluate(nodes, lics, env)
        finally:
            durable.close()
    for text, cond, hits in zip(CONDITIONS, conditions, got):
        want = [i for i, n in enumerate(nodes) if truthy(evaluate(cond, n, NO_LICENCE, env))]
        assert hits == want, text
    # the sample is not degenerate: every condition is true somewhere and false somewhere
    for text, hits in zip(CONDITIONS, got):
        assert 0 < len(hits) < len(nodes), text


def test_values_follow_the_provider() -> None:
    node = Node("a", NodeStatus.ONLINE, last_seen=NOW)
    # disk fills 1% a minute from 50%: 1.0 in 50 minutes
    series = {("a", "disk_used"): [(NOW - 60 * k, 0.5 - 0.01 * k) for k in range(10, -1, -1)]}
    env = EvalEnv(NOW, {}, {}, LinePredictions(series), {"a": {"state": "unexplained", "fields": ["version"],
                                                              "since": NOW - 1200}})

    def value(text: str) -> object:
        return evaluate(parse(text), node, NO_LICENCE, env)

    assert value("node.metrics.disk_used") == pytest.approx(0.5)
    assert value('forecast(node.metrics.disk_used, "1h")') == pytest.approx(1.1)
    assert value("time_to(node.metrics.disk_used, 1.0)") == pytest.approx(3000)
    assert value('time_to(node.metrics.disk_used, 1.0) < "1h"') is True
    assert value('time_to(node.metrics.disk_used, 1.0) < "45m"') is False
    assert value("trend(node.metrics.disk_used)") == pytest.approx(0.01 / 60)
    assert value("drift_age()") == pytest.approx(1200)
    assert value('drift_age() > "15m"') is True
    assert value("node.metrics.cpu") is MISSING  # never reported
    assert value("forecast(node.metrics.cpu, '1h') > 0") is False
    # no predict step ran: missing, never an error
    bare = EvalEnv(NOW, {})
    assert evaluate(parse("anomaly(node.metrics.cpu)"), node, NO_LICENCE, bare) is MISSING
    assert evaluate(parse("node.drift"), node, NO_LICENCE, bare) is MISSING
    assert evaluate(parse("drift_age()"), node, NO_LICENCE, bare) is MISSING


class Broken:
    def latest(self, node_id, metric):  # noqa: ANN001, ANN201
        raise RuntimeError("detector fell over")

    forecast = time_to = anomaly = trend = evidence = latest

    def __getattr__(self, name):  # noqa: ANN001, ANN204
        raise RuntimeError(name)


def test_a_failing_or_lying_provider_gives_missing() -> None:
    node = Node("a", NodeStatus.ONLINE, last_seen=NOW)

    class Lying(LinePredictions):
        def forecast(self, node_id, metric, horizon_s):  # noqa: ANN001, ANN201
            return "lots"

        def anomaly(self, node_id, metric):  # noqa: ANN001, ANN201
            return float("nan")

    for provider in (Broken(), Lying({})):
        env = EvalEnv(NOW, {}, {}, provider, None)
        for text in ("node.metrics.cpu", "forecast(node.metrics.cpu, '1h')", "anomaly(node.metrics.cpu)",
                     "trend(node.metrics.cpu)", "time_to(node.metrics.cpu, 1)"):
            assert evaluate(parse(text), node, NO_LICENCE, env) is MISSING, text
            fn = NativeEngine([parse(f"{text} is missing")])
            assert fn.evaluate([node], [NO_LICENCE], env) == [[0]], text


@pytest.mark.parametrize("text, reason", [
    ('forecast(node.metadata.disk, "1h")', "node.metrics.NAME"),
    ('forecast(node.metrics.disk, 3600)', "duration string"),
    ('forecast(node.metrics.disk, "soon")', "not a duration"),
    ("time_to(node.metrics.disk, node.load)", "number literal"),
    ('time_to(node.metrics.disk, 1) < "later"', "gives seconds"),
    ("anomaly(node.load)", "node.metrics.NAME"),
    ("node.metrics > 1", "name one telemetry metric"),
    ("node.metrics.cpu.x > 1", "name one telemetry metric"),
    ("drift_age(node) > 1", "takes 0 argument"),
])
def test_refused_at_load_time_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ExprError) as info:
        parse(text)
    assert reason in str(info.value)
    assert info.value.column is not None


def test_durations_are_read_as_seconds_when_the_rule_loads() -> None:
    cond = parse('time_to(node.metrics.disk_used, 1.0) < "1h30m"')
    assert cond.right == Const(5400.0)  # type: ignore[union-attr]
    assert parse('"2h" > heartbeat_age(node)').left == Const(7200.0)  # type: ignore[union-attr]


def test_explain_shows_the_forecast_and_its_evidence() -> None:
    node = Node("a", NodeStatus.ONLINE, last_seen=NOW)
    series = {("a", "disk_used"): [(NOW - 60 * k, 0.9 - 0.01 * k) for k in range(10, -1, -1)]}
    env = EvalEnv(NOW, {}, {}, LinePredictions(series), None)
    lines = explain(parse('forecast(node.metrics.disk_used, "1h") > 0.95'), node, NO_LICENCE, env)
    text = "\n".join(lines)
    assert "forecast(node.metrics.disk_used, '1h')  =>  1.5" in text
    assert "evidence  =>  metric='disk_used', observed=0.9, expected=" in text
    assert "horizon_s=3600" in text


def test_explain_shows_the_real_detectors_evidence(make_orchestrator, clock, tmp_path) -> None:
    """Telemetry through the real intake and the builtin predict step; explain's trace of a
    forecast rule shows the forecast's value and the evidence (metric, observed, band, horizon)."""
    import textwrap

    from wyneos_core.explain import explain_node
    from wyneos_core.model import Heartbeat

    rules = tmp_path / "capacity.yaml"
    rules.write_text(textwrap.dedent("""\
        ruleset: capacity
        stage: healing
        rules:
          - id: disk-fills
            description: the disk fills within two hours
            when: 'time_to(node.metrics.disk_used, 1.0) < "2h"'
            then: [{degrade: {}}]
        """))
    from tests.conftest import cluster_yaml

    orch = make_orchestrator(cluster_yaml(1, extra=textwrap.dedent(f"""\
        telemetry:
          metrics: [{{name: disk_used, unit: ratio, min: 0, max: 1}}]
        rulesets: {{paths: [{rules}]}}
        """)))
    for k in range(40):  # 0.2% a tick of 5 s from 50%: full in about 40 minutes
        orch.intake.put_many([Heartbeat("n01", clock(), 0.2, {}, metrics={"disk_used": 0.5 + 0.002 * k})])
        report = orch.tick()
        clock.advance(5)
    node = orch.registry.get("n01")
    out = explain_node(orch, node, report, [])
    [rule] = [r for rs in out["rulesets"] for r in rs["rules"] if r["id"] == "disk-fills"]
    trace = "\n".join(rule["trace"])
    assert rule["value"] is True
    assert "time_to(node.metrics.disk_used, 1.0)  =>  " in trace
    assert "evidence  =>  metric='disk_used', unit='ratio', observed=0.578" in trace
    assert "expected=[" in trace and "horizon_s=" in trace and "trend_per_s=" in trace
