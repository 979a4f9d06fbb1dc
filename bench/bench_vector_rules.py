"""Benchmark: rule conditions over the node table's columns, numpy against numexpr and
polars, and against the closures, on the same rules and nodes in the same run.

40 conditions of the shapes the vector engine compiles (thresholds on load and trust,
heartbeat_age, status and tier, ``in`` lists, ``is missing``, and/or/not) over N
registered nodes, each evaluated to a boolean mask per condition:

* ``numpy``: the native engine's masks (``rules/vector.py``), what the tick runs;
* ``numexpr``: the same conditions as numexpr expressions over the same columns
  (missing values are NaN there too, so a comparison with them is false);
* ``polars``: the same conditions as polars expressions over a frame of the columns,
  all 40 in one ``select`` (polars runs them in parallel); NaN becomes null first,
  since polars orders NaN above every number. Timed twice: with the frame built from
  the columns (what a tick would pay, the columns being numpy arrays) and over a frame
  built beforehand;
* ``closures``: the native engine node by node over plain ``Node`` values.

Then the whole governance step on numpy (``governance_tick``): 40 conditions of the same
shapes with thresholds that few nodes cross (a fleet where little is wrong) as a
governance ruleset with ``for: 2 ticks``, through ``RulesetRunner.governance`` (masks,
state arrays by slot, a ``RuleResult`` per failing pair), ticks 2 and later timed, and
the bytes of rule state per node.

Every backend must give the same masks. ``--json PATH`` writes the timings.

    python bench/bench_vector_rules.py [--nodes 100000] [--repeat 5] [--no-closures]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wyneos_core.config import Config  # noqa: E402
from wyneos_core.model import Heartbeat  # noqa: E402
from wyneos_core.nodetable import STATUS_CODE, TIERS  # noqa: E402
from wyneos_core.model import NodeStatus  # noqa: E402
from wyneos_core.registry import Registry  # noqa: E402
from wyneos_core.rules.expr import parse  # noqa: E402
from wyneos_core.rules.interp import NO_LICENCE, EvalEnv, cluster_summary  # noqa: E402
from wyneos_core.rules.native import NativeEngine  # noqa: E402
from wyneos_core.rules.vector import Columns  # noqa: E402

NOW = 1_700_000_000.0
STALE, OFFLINE, UNKNOWN = (STATUS_CODE[s] for s in (NodeStatus.STALE, NodeStatus.OFFLINE, NodeStatus.UNKNOWN))
TRUSTED = TIERS.index("trusted")


def conditions(rng: random.Random, count: int, rare: bool = False) -> list[tuple[str, str, object]]:
    """(rule text, numexpr text, polars expression builder) for ``count`` conditions
    (``rare``: thresholds that hold on about 1% of the nodes or fewer)."""
    out = []
    for _ in range(count):
        t = round(rng.uniform(0.985, 0.999) if rare else rng.uniform(0.5, 0.95), 3)
        age = rng.choice([79, 79.5] if rare else [18, 30, 48, 120])
        trust = round(rng.uniform(0.001, 0.01) if rare else rng.uniform(0.2, 0.8), 3)
        stale, code = ("unknown", UNKNOWN) if rare else ("stale", STALE)
        below = ">" if rare else "<"
        shape = rng.randrange(7)
        if shape == 0:
            out.append((f"node.load > {t}", f"load > {t}", lambda pl, t=t: pl.col("load") > t))
        elif shape == 1:
            out.append((f"heartbeat_age(node) > {age} and node.status != 'offline'",
                        f"((now - last_seen) > {age}) & (status != {OFFLINE})",
                        lambda pl, age=age: ((NOW - pl.col("last_seen")) > age) & (pl.col("status") != OFFLINE)))
        elif shape == 2:
            out.append((f"(node.load > {t} or node.status == '{stale}') and not node.isolated",
                        f"((load > {t}) | (status == {code})) & ~isolated",
                        lambda pl, t=t, c=code: ((pl.col("load") > t) | (pl.col("status") == c)) & ~pl.col("isolated")))
        elif shape == 3 and rare:
            out.append((f"node.load is not missing and heartbeat_age(node) >= {age}",
                        f"(load == load) & ((now - last_seen) >= {age})",
                        lambda pl, age=age: pl.col("load").is_not_null() & ((NOW - pl.col("last_seen")) >= age)))
        elif shape == 3:
            out.append((f"node.load is missing or heartbeat_age(node) >= {age}",
                        f"(load != load) | ((now - last_seen) >= {age})",
                        lambda pl, age=age: pl.col("load").is_null() | ((NOW - pl.col("last_seen")) >= age)))
        elif shape == 4:
            other, other_code = ("unknown", UNKNOWN) if rare else ("offline", OFFLINE)
            out.append((f"node.status in ['{stale}', '{other}'] or node.load >= {t}",
                        f"(status == {code}) | (status == {other_code}) | (load >= {t})",
                        lambda pl, t=t, c=code, o=other_code: pl.col("status").is_in([c, o]) | (pl.col("load") >= t)))
        elif shape == 5:
            out.append((f"node.trust < {trust} and node.load > {t}",
                        f"(trust < {trust}) & (load > {t})",
                        lambda pl, t=t, trust=trust: (pl.col("trust") < trust) & (pl.col("load") > t)))
        else:
            out.append((f"not trust_at_least('trusted') and heartbeat_age(node) {below} {age}",
                        f"(tier < {TRUSTED}) & ((now - last_seen) {below} {age})",
                        (lambda pl, age=age: (pl.col("tier") < TRUSTED) & ((NOW - pl.col("last_seen")) > age)) if rare
                        else (lambda pl, age=age: (pl.col("tier") < TRUSTED) & ((NOW - pl.col("last_seen")) < age))))
    return out


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--rules", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-closures", action="store_true", help="skip the node-by-node closures (slow at 1M)")
    ap.add_argument("--threads", type=int, default=0, help="numexpr and polars threads (0: their default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rng = random.Random(1)
    registry = Registry({**Config.defaults()["heartbeat"], "max_nodes": args.nodes})
    ids = [f"n{i:07d}" for i in range(args.nodes)]
    for node_id in ids:
        registry.register(node_id, now=NOW - 100)
    registry.accept_all([Heartbeat(i, NOW - rng.uniform(0, 80), round(rng.uniform(0, 1), 3))
                         for i in ids if rng.random() < 0.97], NOW)
    registry.refresh(NOW)
    table = registry.table
    slots = table.slots()
    n = len(slots)
    table.trust[slots] = np.where(np.random.default_rng(2).random(n) < 0.9, np.random.default_rng(3).random(n), np.nan)
    table.tier[slots] = np.random.default_rng(4).integers(-1, len(TIERS), n)
    table.isolated[slots] = np.random.default_rng(5).random(n) < 0.05
    nodes = registry.nodes()
    env = EvalEnv(NOW, cluster_summary(nodes, NOW), {})
    conds = conditions(rng, args.rules)
    engine = NativeEngine([parse(text, "enforcement") for text, _, _ in conds])
    assert all(m is not None for m in engine.masks)
    results: dict[str, float] = {}

    # numpy: the engine's own masks
    results["numpy"], want = timed(lambda: [m(cols, env) for cols in [Columns(table, slots)] for m in engine.masks],
                                    args.repeat)

    try:  # measured, not dependencies: pip install numexpr polars
        import numexpr as ne
        import polars as pl
    except ImportError as exc:
        sys.exit(f"bench_vector_rules compares numpy with numexpr and polars: {exc} (pip install numexpr polars)")

    if args.threads:
        ne.set_num_threads(args.threads)

    def numexpr_masks() -> list[np.ndarray]:
        cols = {"load": table.load[slots], "last_seen": table.last_seen[slots], "status": table.status[slots],
                "isolated": table.isolated[slots], "trust": table.trust[slots], "tier": table.tier[slots],
                "now": NOW}  # gathered once for all the conditions
        return [ne.evaluate(text, local_dict=cols) for _, text, _ in conds]

    results["numexpr"], got = timed(numexpr_masks, args.repeat)
    assert all(np.array_equal(a, b) for a, b in zip(got, want)), "numexpr disagrees"

    exprs = [build(pl).fill_null(False).alias(f"r{i}") for i, (_, _, build) in enumerate(conds)]

    def frame() -> pl.DataFrame:
        return pl.DataFrame({"load": table.load[slots], "last_seen": table.last_seen[slots],
                             "status": table.status[slots], "isolated": table.isolated[slots],
                             "trust": table.trust[slots], "tier": table.tier[slots]}).with_columns(
            pl.col("load").fill_nan(None), pl.col("last_seen").fill_nan(None), pl.col("trust").fill_nan(None))

    def polars_masks(df: pl.DataFrame) -> list[np.ndarray]:
        out = df.select(exprs)
        return [out.get_column(f"r{i}").to_numpy() for i in range(len(exprs))]

    results["polars"], got = timed(lambda: polars_masks(frame()), args.repeat)
    assert all(np.array_equal(a, b) for a, b in zip(got, want)), "polars disagrees"
    ready = frame()
    results["polars_frame_ready"], _ = timed(lambda: polars_masks(ready), args.repeat)

    if not args.no_closures:
        plain = [v.snapshot() for v in nodes]
        lics = [NO_LICENCE] * n
        results["closures"], hits = timed(lambda: engine.evaluate(plain, lics, env), max(1, args.repeat // 3))
        assert hits == [np.flatnonzero(m).tolist() for m in want], "the closures disagree"

    rare = [text for text, _, _ in conditions(random.Random(7), args.rules, rare=True)]
    results["governance_tick"], state_bytes = governance(nodes, rare, args.repeat)

    base = results["numpy"]
    print(f"{n} nodes x {args.rules} conditions, median of {args.repeat} "
          f"({sum(int(m.sum()) for m in want)} true (rule, node) pairs):")
    for name, seconds in results.items():
        print(f"  {name:20s} {seconds * 1000:9.1f} ms   {seconds / base:6.2f}x numpy")
    print(f"  rule state: {state_bytes / n:.0f} B per node ({args.rules} rules)")
    if args.json:
        args.json.write_text(json.dumps({"nodes": n, "rules": args.rules, "seconds": results,
                                         "state_bytes_per_node": state_bytes / n}, indent=1))


def governance(nodes, texts: list[str], repeat: int) -> tuple[float, int]:
    """Median seconds of a governance tick (after the first) and the rule state's bytes."""
    import tempfile

    from wyneos_core.rules.loader import load_ruleset
    from wyneos_core.rules.runtime import RulesetRunner

    lines = ["ruleset: bench", "stage: governance", "rules:"]
    for i, text in enumerate(texts):
        lines += [f"  - id: r{i}", "    description: bench", f"    require: not ({text})", "    for: 2 ticks",
                  "    message: failed"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text("\n".join(lines) + "\n")
        runner = RulesetRunner.from_rulesets([load_ruleset(path)])
    env = RulesetRunner.environment(nodes, NOW)
    times = []
    failing = 0
    for tick in range(1, repeat + 2):
        t0 = time.perf_counter()
        results = runner.governance(nodes, {}, tick=tick, env=env, transitions=[], errors=[])
        if tick > 1:
            times.append(time.perf_counter() - t0)
        failing = len(results)
    print(f"  governance: {failing} failing (rule, node) pairs of {len(texts) * len(nodes)}")
    state = sum(t.code.nbytes + (t.since_tick.nbytes if t.since_tick is not None else 0)
                + (t.since_at.nbytes if t.since_at is not None else 0)
                for loaded in runner.loaded.values() for t in loaded.trackers.values())
    return statistics.median(times), state


if __name__ == "__main__":
    main()
