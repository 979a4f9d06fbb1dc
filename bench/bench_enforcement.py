"""Benchmark: what graduated enforcement adds to a tick.

One cluster of N nodes in 20 zones, a healing ruleset proposing an isolation for 5% of
them every tick (hot nodes, a different 5% each tick) and load shedding for 10%, run
twice in the same process: with the enforcement section at its defaults (the baseline:
the gate still runs, with nothing configured), and with every check configured but
holding nothing, so that both runs decide the same actions: a mode per rule and per
action type, 100 exceptions (of nodes that are never hot), a per-zone budget
(max_disrupted, rate and unhealthy threshold) and a fleet-wide one with room to spare,
and 10 operator cordons (of nodes that are never hot) kept in the state store. The
ratio of the decide step's time (``timings_ms["decide"]``, where the gate runs) and of
the whole tick is the cost of the checks.

    python bench/bench_enforcement.py [--nodes 20000] [--ticks 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from wyneos_core.config import load_config
from wyneos_core.enforcement.overrides import set_override
from wyneos_core.model import Heartbeat
from wyneos_core.tick import Orchestrator

RULES = """
ruleset: hot
stage: healing
rules:
  - id: isolate-hot
    description: hot nodes are isolated
    when: node.load > 0.9
    then: [{isolate: {}}]
  - id: shed-warm
    description: warm nodes shed load
    when: node.load > 0.8
    then: [{reduce_load: {target_load: 0.5}}]
"""

FULL = """
enforcement:
  rules: {shed-warm: enforce, hot/isolate-hot: enforce}
  actions: {quarantine: warn}
  budgets:
    - {name: zones, per: zone, max_disrupted: 100%, rate: {per_second: 1000000, burst: 1000000},
       unhealthy_threshold: 0.99}
    - {name: fleet, max_disrupted: 100%}
  exceptions:
"""


def config_text(nodes: int, full: bool) -> str:
    text = f"""
mesh: {{topology: star}}
nodes: []
rulesets: {{paths: [hot.yaml]}}
plugins: {{disable: [licence, governance, healing, enforcement, trust]}}
decide: {{max_isolations_per_tick: {nodes}, max_unhealthy_fraction: 1.0}}
consensus: {{enabled: false}}
state: {{path: state.db}}
report: {{stdout: none, json_path: null}}
"""
    if full:
        text += FULL + "".join(f"    - {{id: ex-{i}, owner: o, reason: r, node: n{i * 20 + 2:06d}, "
                               f"expires: '2099-01-01T00:00:00Z'}}\n" for i in range(100))
    return text


def run(nodes: int, ticks: int, full: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "hot.yaml").write_text(RULES)
        (root / "c.yaml").write_text(config_text(nodes, full))
        orch = Orchestrator(load_config(root / "c.yaml"), load_entrypoints=False)
        ids = [f"n{i:06d}" for i in range(nodes)]
        for i, node_id in enumerate(ids):
            orch.registry.register(node_id, now=time.time(), metadata={"zone": f"z{i % 20}"})
        if full:
            for node_id in ids[3:200:20]:  # never hot
                set_override(orch.store, node_id, "cordon", "maintenance", "bench")
        decide, total = [], []
        with orch:
            for tick in range(ticks):
                now = time.time()
                orch.intake.put_many(Heartbeat(n, now, 0.95 if (i + tick) % 20 == 0 else 0.85 if i % 10 == 1 else 0.3,
                                               {"zone": f"z{i % 20}"}) for i, n in enumerate(ids))
                report = orch.tick()
                decide.append(report.timings_ms["decide"])
                total.append(report.duration_ms)
        return {"decide_ms": statistics.median(decide), "tick_ms": statistics.median(total)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20000)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    base = run(args.nodes, args.ticks, full=False)
    full = run(args.nodes, args.ticks, full=True)
    out = {"nodes": args.nodes, "ticks": args.ticks, "baseline": base, "enforcement": full,
           "decide_ratio": round(full["decide_ms"] / base["decide_ms"], 3),
           "tick_ratio": round(full["tick_ms"] / base["tick_ms"], 3)}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
