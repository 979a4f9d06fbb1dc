"""Benchmark: propagation of 1,000 actions over a 100k-node mesh in one tick.

Measures the builtin ``propagate`` step itself (``wyneos_propagate``: one routing tree,
hop-by-hop delivery through the ``wyneos_deliver`` hook with acknowledgement, load
planning, effects, partition detection) on a small-world mesh, with a mix of actions:
isolate (target + neighbours), quarantine, reduce_load (target + receivers).

Baselines, measured in the same run on the same mesh and actions:

* ``floor``: a plain breadth-first tree over the same adjacency and the union of tree
  paths to every target, no hooks, no reports - the least any tree-based propagation
  must do; the ratio ``propagate / floor`` is the cost of hooks, acks and reporting;
* ``search per action``: what the design avoids - one shortest-path search from the
  orchestrator per action to each of the targets propagation reached (target and
  neighbours, the same targets), networkx, timed on a sample and scaled to all actions.

Wall and CPU time (``time.process_time``) are both reported, with the machine's load
average at the start, since other jobs on a shared machine stretch wall time.

    python bench/bench_propagate.py [--nodes 100000] [--actions 1000] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import networkx as nx  # noqa: E402

from wyneos_core.builtin import decide, propagate  # noqa: E402
from wyneos_core.config import Config  # noqa: E402
from wyneos_core.mesh import build_topology  # noqa: E402
from wyneos_core.model import ORIGIN, Action, NodeStatus, TickReport  # noqa: E402
from wyneos_core.tick import Orchestrator, TickContext  # noqa: E402


def make(n: int) -> Orchestrator:
    config = Config.defaults()
    config["report"]["stdout"] = "none"
    config["report"]["json_path"] = None
    config["mesh"].update({"topology": "small_world", "degree": 4, "origin_links": 8, "seed": 1})
    orch = Orchestrator(config, clock=lambda: 1_700_000_000.0, load_entrypoints=False, store=False)
    ids = [f"node-{i:06d}" for i in range(n)]
    rng = random.Random(1)
    for node_id in ids:
        node = orch.registry.register(node_id, now=1_700_000_000.0)
        node.status = NodeStatus.ONLINE
        node.load = round(rng.uniform(0.2, 0.6), 3)
    orch.mesh = build_topology(ids, config["mesh"])
    return orch


def actions_for(orch: Orchestrator, count: int, seed: int = 2) -> list[Action]:
    ids = [n.id for n in orch.registry]
    rng = random.Random(seed)
    picked = rng.sample(ids, count)
    out = []
    for i, node_id in enumerate(picked):
        kind = ("isolate", "quarantine", "reduce_load")[i % 3] if i % 10 else "isolate"
        params = {"target_load": 0.1} if kind == "reduce_load" else {}
        out.append(Action(kind, node_id, "bench", "bench", params=params))
    return out


def run_propagate(orch: Orchestrator, actions: list[Action], tick: int) -> tuple[float, float, TickReport]:
    report = TickReport(tick=tick, started_at=0.0)
    ctx = TickContext(tick=tick, now=0.0, config=orch.config, registry=orch.registry, mesh=orch.mesh,
                      store=None, orchestrator=orch, report=report)
    state = decide.state_of(orch)
    for a in actions:
        state.in_force[a.id] = decide.InForce(a, tick, tick)
    t0, c0 = time.perf_counter(), time.process_time()
    report.deliveries = propagate.wyneos_propagate(ctx, actions, orch.mesh)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    # undo, so that every repeat starts from the same mesh
    for a in actions:
        if a.type == "isolate":
            orch.mesh.reinstate(a.target)
            orch.registry[a.target].isolated = False
    state.in_force.clear()
    return elapsed, cpu, report


def floor(orch: Orchestrator, actions: list[Action]) -> float:
    adj = {v: list(nbrs) for v, nbrs in orch.mesh.graph.adj.items()}
    t0 = time.perf_counter()
    parent: dict[str, str] = {}
    seen = {ORIGIN}
    frontier = [ORIGIN]
    while frontier:
        nxt = []
        for v in frontier:
            for w in adj[v]:
                if w not in seen:
                    seen.add(w)
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    hops = 0
    for a in actions:
        targets = [a.target, *adj[a.target]] if a.type == "isolate" else [a.target]
        done = {ORIGIN}
        for t in targets:
            v = t
            while v not in done and v in parent:
                done.add(v)
                hops += 1
                v = parent[v]
    return time.perf_counter() - t0


def search_per_action(orch: Orchestrator, actions: list[Action], report: TickReport, sample: int) -> float:
    """One shortest-path search per action, routed to the same targets as propagation."""
    targets: dict[str, list[str]] = {}
    for d in report.deliveries:
        targets.setdefault(d.action_id, []).append(d.target)
    graph = orch.mesh.graph
    sample = max(1, min(sample, len(actions)))
    t0 = time.perf_counter()
    for a in actions[:sample]:
        for target in targets.get(a.id, [a.target]):
            if target in graph:
                try:
                    nx.shortest_path(graph, ORIGIN, target)
                except nx.NetworkXNoPath:
                    pass
    return (time.perf_counter() - t0) / sample * len(actions)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--actions", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sample", type=int, default=10, help="actions timed for the search-per-action baseline")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)

    load = _loadavg()
    t0 = time.perf_counter()
    orch = make(args.nodes)
    built = time.perf_counter() - t0
    actions = actions_for(orch, args.actions)
    times, cpus, report = [], [], None
    for r in range(args.repeat):
        elapsed, cpu, report = run_propagate(orch, actions, r + 1)
        times.append(elapsed)
        cpus.append(cpu)
    floors = [floor(orch, actions) for _ in range(args.repeat)]
    assert report is not None
    # the search baseline runs on the mesh as propagation found it (isolations undone)
    search = search_per_action(orch, actions, report, args.sample)
    delivered = sum(1 for d in report.deliveries if d.delivered)
    result = {
        "nodes": args.nodes,
        "edges": orch.mesh.graph.number_of_edges(),
        "actions": args.actions,
        "deliveries": len(report.deliveries),
        "delivered": delivered,
        "build_s": round(built, 3),
        "propagate_s": {"median": round(statistics.median(times), 4), "min": round(min(times), 4)},
        "propagate_cpu_s": {"median": round(statistics.median(cpus), 4), "min": round(min(cpus), 4)},
        "loadavg_at_start": load,
        "floor_s": round(statistics.median(floors), 4),
        "ratio_to_floor": round(statistics.median(times) / statistics.median(floors), 2),
        "search_per_action_s": round(search, 2),
        "speedup_over_search": round(search / statistics.median(times), 1),
        "under_1s": statistics.median(times) < 1.0,
    }
    print(f"mesh: {result['nodes']} nodes, {result['edges']} edges (built in {built:.1f}s); "
          f"load average at start {load}")
    print(f"propagate {args.actions} actions: median {result['propagate_s']['median']:.3f}s wall, "
          f"{result['propagate_cpu_s']['median']:.3f}s CPU (min {result['propagate_s']['min']:.3f}s wall) "
          f"-> {delivered}/{len(report.deliveries)} deliveries")
    print(f"floor (plain tree + path union, no hooks): {result['floor_s']:.3f}s; "
          f"ratio {result['ratio_to_floor']:.2f}x")
    print(f"search per action to the same targets (scaled from {args.sample}): {search:.1f}s; "
          f"the routing tree is {result['speedup_over_search']:.0f}x faster")
    print("under 1 s: " + ("yes" if result["under_1s"] else "NO"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["under_1s"] else 1


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    sys.exit(main())
