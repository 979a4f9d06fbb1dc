"""Benchmark: the drift step at 100,000 nodes.

What is timed is ``DriftEngine.step`` as the builtin drift plugin calls it each tick:
the node rows, the change check of every node's metadata, re-reading the nodes that
changed (interning their reported version, configuration digest, package set and
labels), the comparison with the declaration in force and the classification of every
node (in_sync, unexplained, pending, intended, repaired). Each tick ``--changed`` of
the nodes (default 1%) report new metadata (half of them drifting away, half coming
back), as heartbeats replace a node's metadata. Three label-selected declarations.

Baseline, measured in the same run: the comparison alone with numpy, over code arrays
prepared in advance (reported != declared where declared, per field, to a bit mask,
and a count per mask value): what any vectorised drift check must at least do. The
ratio step / baseline is what to watch; the target is the step under 0.05 s per tick.

    python bench/bench_drift.py [--nodes 100000] [--ticks 10] [--changed 0.01] [--json FILE]
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

from wyneos_core.drift.declared import declaration_from  # noqa: E402
from wyneos_core.drift.engine import DriftEngine  # noqa: E402
from wyneos_core.model import Node  # noqa: E402

ROLES = ("web", "db", "cache")
PACKAGES = {r: [f"{r}-server=1.{i}" for i in range(20)] + ["openssl=3.0.13", "libc=2.36"] for r in ROLES}


def declared(role: str) -> dict:
    return {"labels": {"role": role}, "version": "2.4.0", "config_digest": f"sha256:{role}", "packages": PACKAGES[role]}


def build(nodes: int) -> tuple[list[Node], list]:
    decls = [declaration_from({"selector": {"labels": {"role": r}}, **{k: v for k, v in declared(r).items()}},
                              f"config[{i}]") for i, r in enumerate(ROLES)]
    fleet = [Node(f"node-{i:06d}", metadata=dict(declared(ROLES[i % 3]))) for i in range(nodes)]
    return fleet, decls


def baseline(reported: np.ndarray, declared_codes: np.ndarray) -> np.ndarray:
    differs = (declared_codes >= 0) & (reported != declared_codes)
    mask = (differs * np.array([1, 2, 4, 8], np.uint8)).sum(axis=1).astype(np.uint8)
    return np.bincount(mask, minlength=16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--ticks", type=int, default=10)
    ap.add_argument("--changed", type=float, default=0.01, help="fraction of nodes with new metadata per tick")
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    fleet, decls = build(args.nodes)
    engine = DriftEngine(decls)
    t0 = time.perf_counter()
    first = engine.step(fleet, 0.0)
    first_s = time.perf_counter() - t0
    step_times, base_times, changed_times = [], [], []
    per_tick = max(1, int(args.changed * args.nodes))
    reported = engine.reported[: args.nodes].copy()
    declared_codes = engine.declared[: args.nodes].copy()
    counts = first.counts
    for tick in range(1, args.ticks + 1):
        # the unchanged tick: nothing reported anew
        t0 = time.perf_counter()
        engine.step(fleet, float(tick))
        step_times.append(time.perf_counter() - t0)
        # a tick in which ``changed`` of the nodes report new metadata
        for i in rng.sample(range(args.nodes), per_tick):
            node = fleet[i]
            md = dict(declared(ROLES[i % 3]))
            if rng.random() < 0.5:
                md["config_digest"] = f"sha256:edited-{tick}"
            node.metadata = md
        t0 = time.perf_counter()
        step = engine.step(fleet, tick + 0.5)
        changed_times.append(time.perf_counter() - t0)
        counts = step.counts
        t0 = time.perf_counter()
        baseline(reported, declared_codes)
        base_times.append(time.perf_counter() - t0)
    row = {
        "nodes": args.nodes, "ticks": args.ticks, "changed_per_tick": per_tick, "first_step_s": round(first_s, 4),
        "step_s": round(statistics.median(step_times), 5), "step_changed_s": round(statistics.median(changed_times), 5),
        "baseline_s": round(statistics.median(base_times), 5), "counts": counts,
    }
    row["ratio"] = round(row["step_s"] / row["baseline_s"], 2) if row["baseline_s"] else None
    row["ratio_changed"] = round(row["step_changed_s"] / row["baseline_s"], 2) if row["baseline_s"] else None
    print(f"drift step at {args.nodes:,} nodes, median of {args.ticks} ticks")
    print(f"  first step (every node read)        {first_s:9.4f} s")
    print(f"  step, no metadata changed (s)       {row['step_s']:9.4f}   ratio {row['ratio']}")
    print(f"  step, {per_tick:,} nodes changed (s)   {row['step_changed_s']:9.4f}   ratio {row['ratio_changed']}")
    print(f"  baseline (s): numpy compare only    {row['baseline_s']:9.4f}")
    print(f"  states after the last tick: {counts}")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
