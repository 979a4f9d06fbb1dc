"""Benchmark: consensus bookkeeping at 100,000 nodes with 6 witness observations each per tick.

Measures one tick of ``wyneos_core.consensus`` as the decide step runs it: take in every
witness observation of the tick (``ConsensusState.update``: suspicions followed, reports
filed, contradictions of the orchestrator's direct evidence counted, liars discounted)
and give a verdict for a severe action on every suspect. The cluster: a small-world mesh
of degree 6 (so 6 observations per node per tick), 1% of the nodes crashed (silent to
the orchestrator, reported unreachable by their peers), 1% cut off from the orchestrator
only (silent, reported reachable), 2% lying witnesses.

Baseline, measured in the same run on the same observations: ``tally`` - one plain pass
that counts "unreachable" reports per subject in a dict, the least any witness
bookkeeping must do; the ratio ``consensus / tally`` is the cost of windows, weights,
contradiction tracking and verdicts.

Wall and CPU time (``time.process_time``) are both reported, with the machine's load
average at the start, since other jobs on a shared machine stretch wall time.

    python bench/bench_consensus.py [--nodes 100000] [--degree 6] [--ticks 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import networkx as nx  # noqa: E402

from wyneos_core.consensus import ConsensusSettings, ConsensusState  # noqa: E402
from wyneos_core.model import Action, NodeStatus, Observation  # noqa: E402
from wyneos_core.registry import Registry  # noqa: E402

NOW = 1_700_000_000.0
INTERVAL = 5.0
SETTINGS = {"stale_after": 15, "offline_after": 40, "max_clock_skew": 30, "unknown_nodes": "reject",
            "max_metadata_bytes": 8192, "max_load": 64, "max_nodes": 1_000_000}


def make(n: int, degree: int, seed: int = 1):
    """Registry, adjacency, and the sets of crashed, cut-off and lying nodes."""
    ids = [f"node-{i:06d}" for i in range(n)]
    graph = nx.watts_strogatz_graph(n, degree, 0.1, seed=seed)
    adj = {ids[v]: [ids[w] for w in graph.adj[v]] for v in graph}
    rng = random.Random(seed)
    picked = rng.sample(ids, max(3, n * 4 // 100))
    k = max(1, n // 100)
    crashed, cut_off, liars = set(picked[:k]), set(picked[k:2 * k]), set(picked[2 * k:])
    registry = Registry(SETTINGS)
    for node_id in ids:
        node = registry.register(node_id, now=NOW)
        silent = node_id in crashed or node_id in cut_off
        node.last_seen = NOW - 60.0 if silent else NOW
        node.status = NodeStatus.OFFLINE if silent else NodeStatus.ONLINE
    return ids, registry, adj, crashed, cut_off, liars


def observations(ids, adj, crashed, cut_off, liars, tick: int) -> list[Observation]:
    """Every observation the orchestrator receives in one tick (silent nodes' are lost)."""
    out = []
    for v in ids:
        if v in crashed or v in cut_off:
            continue
        liar = v in liars
        for w in adj[v]:
            up = w not in crashed
            out.append(Observation(v, w, up != liar, 1.2 if up else None, tick, True))
    return out


def run_consensus(state: ConsensusState, registry, obs, silent, actions, tick: int) -> tuple[float, float, dict]:
    """One tick's bookkeeping, with the cyclic garbage collector paused as the tick pauses it."""
    gc.collect()
    gc.disable()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        state.update(tick, NOW, obs, registry, silent, INTERVAL)
        verdicts = {}
        get = registry.get
        size = len(registry)
        for a in actions:
            verdicts[a.target] = state.verdict(a, get(a.target), size, 6)
        return time.perf_counter() - t0, time.process_time() - c0, verdicts
    finally:
        gc.enable()


def tally(obs) -> tuple[float, int]:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        counts: dict[str, int] = {}
        for o in obs:
            if not o.reachable:
                counts[o.subject] = counts.get(o.subject, 0) + 1
        return time.perf_counter() - t0, len(counts)
    finally:
        gc.enable()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--degree", type=int, default=6, help="mesh degree = observations per node per tick")
    p.add_argument("--ticks", type=int, default=5)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)

    load = _loadavg()
    t0 = time.perf_counter()
    ids, registry, adj, crashed, cut_off, liars = make(args.nodes, args.degree)
    built = time.perf_counter() - t0
    state = ConsensusState(ConsensusSettings())
    silent = dict.fromkeys(crashed | cut_off, 1)
    actions = [Action("isolate", n, "offline", "healing") for n in sorted(silent)]
    times, cpus, floors = [], [], []
    verdicts: dict = {}
    obs: list[Observation] = []
    for tick in range(2, args.ticks + 2):
        obs = observations(ids, adj, crashed, cut_off, liars, tick)
        elapsed, cpu, verdicts = run_consensus(state, registry, obs, silent, actions, tick)
        times.append(elapsed)
        cpus.append(cpu)
        floors.append(tally(obs)[0])
    approved = {n for n, v in verdicts.items() if v.approved}
    median = statistics.median(times)
    result = {
        "nodes": args.nodes,
        "observations_per_tick": len(obs),
        "suspects": len(silent),
        "crashed": len(crashed),
        "cut_off": len(cut_off),
        "liars": len(liars),
        "isolations_approved": len(approved),
        "approved_crashed": len(approved & crashed),
        "approved_cut_off": len(approved & cut_off),
        "discounted": len(state.discounted),
        "discounted_liars": len(state.discounted & liars),
        "build_s": round(built, 3),
        "consensus_s": {"median": round(median, 4), "min": round(min(times), 4)},
        "consensus_cpu_s": {"median": round(statistics.median(cpus), 4), "min": round(min(cpus), 4)},
        "tally_s": round(statistics.median(floors), 4),
        "ratio_to_tally": round(median / max(statistics.median(floors), 1e-9), 2),
        "loadavg_at_start": load,
        "under_0_2s": median < 0.2,
    }
    print(f"cluster: {args.nodes} nodes, {len(obs)} observations per tick (degree {args.degree}); "
          f"{len(crashed)} crashed, {len(cut_off)} cut off from the orchestrator, {len(liars)} liars; "
          f"load average at start {load}")
    print(f"consensus per tick: median {median:.3f}s wall, {result['consensus_cpu_s']['median']:.3f}s CPU "
          f"(min {min(times):.3f}s) over {args.ticks} ticks")
    print(f"tally baseline (count unreachable reports per subject): {result['tally_s']:.3f}s; "
          f"ratio {result['ratio_to_tally']:.2f}x")
    print(f"verdicts: {len(approved & crashed)}/{len(crashed)} crashed nodes confirmed, "
          f"{len(approved & cut_off)}/{len(cut_off)} cut-off nodes approved (must be 0); "
          f"{len(state.discounted & liars)}/{len(liars)} liars discounted")
    print("under 0.2 s per tick: " + ("yes" if result["under_0_2s"] else "NO"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["under_0_2s"] else 1


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    sys.exit(main())
