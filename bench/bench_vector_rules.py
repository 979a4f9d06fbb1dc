"""Benchmark: rule conditions over the node table's columns against the closures.

40 conditions on status, load, last heartbeat and heartbeat_age (the shapes the
vector engine compiles: comparisons, and/or/not, is missing) over N registered nodes:
the native engine evaluated over the registry's nodes (numpy masks over the columns)
and over a plain list of the same nodes (the closures, node by node), in the same run.

    python bench/bench_vector_rules.py [--nodes 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wyneos_core.config import Config  # noqa: E402
from wyneos_core.model import Heartbeat  # noqa: E402
from wyneos_core.registry import Registry  # noqa: E402
from wyneos_core.rules.expr import parse  # noqa: E402
from wyneos_core.rules.interp import NO_LICENCE, EvalEnv, cluster_summary  # noqa: E402
from wyneos_core.rules.native import NativeEngine  # noqa: E402

NOW = 1_700_000_000.0


def conditions(rng: random.Random, count: int) -> list[str]:
    out = []
    for i in range(count):
        t = rng.uniform(0.5, 0.95)
        age = rng.choice([18, 30, 48, 120])
        out.append(rng.choice([
            f"node.load > {t:.2f}",
            f"heartbeat_age(node) > {age} and node.status != 'offline'",
            f"(node.load > {t:.2f} or node.status == 'stale') and not node.isolated",
            f"node.load is missing or heartbeat_age(node) >= {age}",
            f"node.status == 'stale' or node.load >= {t:.2f}",
        ]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--rules", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = random.Random(1)
    registry = Registry({**Config.defaults()["heartbeat"], "max_nodes": args.nodes})
    ids = [f"n{i:07d}" for i in range(args.nodes)]
    for node_id in ids:
        registry.register(node_id, now=NOW - 100)
    registry.accept_all([Heartbeat(i, NOW - rng.uniform(0, 80), round(rng.uniform(0, 1), 3))
                         for i in ids if rng.random() < 0.97], NOW)
    registry.refresh(NOW)
    table_nodes = registry.nodes()
    plain_nodes = [n.snapshot() for n in table_nodes]
    lics = [NO_LICENCE] * len(ids)
    env = EvalEnv(NOW, cluster_summary(plain_nodes, NOW), {})
    engine = NativeEngine([parse(c, "enforcement") for c in conditions(rng, args.rules)])
    assert all(m is not None for m in engine.masks)
    timings = {}
    for name, nodes in (("columns", table_nodes), ("closures", plain_nodes)):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            hits = engine.evaluate(nodes, lics, env)
            times.append(time.perf_counter() - t0)
        timings[name] = (statistics.median(times), hits)
    assert timings["columns"][1] == timings["closures"][1], "the two paths must agree"
    col, clo = timings["columns"][0], timings["closures"][0]
    print(f"{args.nodes} nodes x {args.rules} conditions: columns {col:.3f} s, closures {clo:.3f} s, "
          f"{clo / col:.1f}x; {sum(map(len, timings['columns'][1]))} hits")


if __name__ == "__main__":
    main()
