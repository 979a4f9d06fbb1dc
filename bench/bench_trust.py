"""Benchmark: the trust step at 100,000 nodes and 600,000 witness observation edges.

What is timed is the builtin ``trust`` plugin's ``wyneos_trust`` hook, called as the
tick calls it, and the core writing its result onto the nodes: gathering the evidence from the nodes, licences and governance results,
the beta updates of the six signals, EigenTrust over the observations (sparse power
iteration, warm-started from the last tick), the combined score, admission and the
tiers, and the node id -> (score, tier) mapping it returns. Every tick the
observations change (a fresh random 5% of the reports say "down") and a few hundred
nodes go offline or fail a rule.

Baseline, measured in the same run: a plain sparse power iteration (scipy CSR
matrix-vector products, no trust logic) to the same tolerance from the uniform vector,
over the same edges, including building its matrix. The ratio step / baseline is what
to watch; the target is the step under 0.3 s per tick at the default size.

    python bench/bench_trust.py [--nodes 100000] [--edges 600000] [--ticks 5] [--warmup 5]
                                [--form registry|batch|objects] [--json FILE]

The observations come over a fixed set of who-observes-whom edges. By default
(``--form registry``) the way the real tick gets them: one heartbeat per observing
node (a ``CheckedHeartbeat``, as the service's intake queues it, built outside the
timing) carrying its ``model.Observation`` objects, applied to the registry
(``Registry.accept_all``, timed separately), then ``Registry.take_observations`` into
``ctx.observations`` (timed separately: that is where the ids are dictionary-encoded
now, in the tick's heartbeat step) and the trust step. ``--form batch`` hands the step one ``ObservationBatch`` in
``ctx.scratch`` directly; ``--form objects`` a plain list of ``model.Observation`` in
``ctx.observations`` (no registry: each id looked up per edge, the old path).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wyneos_core.builtin import trust as trust_plugin  # noqa: E402
from wyneos_core.config import Config  # noqa: E402
from wyneos_core.intake import CheckedHeartbeat  # noqa: E402
from wyneos_core.model import LicenceResult, NodeStatus, Observation, RuleResult, Severity, TickReport  # noqa: E402
from wyneos_core.tick import Orchestrator, TickContext, _apply_trust  # noqa: E402
from wyneos_core.trust.observations import ObservationBatch  # noqa: E402

T0 = 1_700_000_000.0


def build(nodes: int, seed: int) -> tuple[Orchestrator, list[str], dict[str, LicenceResult]]:
    config = Config.defaults()
    orch = Orchestrator(config, store=False, load_entrypoints=False, clock=lambda: T0)
    ids = [f"node-{i:06d}" for i in range(nodes)]
    for node_id in ids:
        node = orch.registry.register(node_id, now=T0)
        node.status = NodeStatus.ONLINE
        node.last_seen = T0
    licences = {i: LicenceResult(i, True, source="bench") for i in ids}
    return orch, ids, licences


def mesh_edges(rng: np.random.Generator, n: int, edges: int) -> tuple[np.ndarray, np.ndarray]:
    """Who observes whom: fixed across ticks (a mesh's neighbours change rarely);
    mostly near neighbours on a ring, as a mesh has locality."""
    src = rng.integers(0, n, edges)
    dst = (src + rng.integers(1, 8, edges)) % n
    return src, dst


def observations(rng: np.random.Generator, ids: list[str], src: np.ndarray, dst: np.ndarray,
                 form: str = "batch", tick: int = 1) -> tuple[Any, np.ndarray]:
    """This tick's reports over the fixed edges: 5% of them, drawn anew, say "down";
    and the reachable flag of every edge (for the baseline).

    ``batch``: one dictionary-encoded ``ObservationBatch``; ``objects``: one
    ``model.Observation`` per edge; ``registry``: one ``CheckedHeartbeat`` per observing
    node carrying its observations (``src`` sorted, so each node's edges are together),
    the heartbeats in a random order, each one's objects made together (as decoding a
    request does). All built outside the timing.
    """
    reachable = rng.random(src.size) >= 0.05
    if form == "batch":
        return ObservationBatch(ids, src, dst, reachable), reachable
    if form == "objects":
        return [Observation(ids[a], ids[b], r, None, None, True)
                for a, b, r in zip(src.tolist(), dst.tolist(), reachable.tolist())], reachable
    starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]]).tolist()
    ends = starts[1:] + [src.size]
    order = rng.permutation(len(starts)).tolist()  # heartbeats arrive in no particular order
    now = T0 + tick
    subjects, flags = dst.tolist(), reachable.tolist()
    out = []
    for k in order:
        a, b = starts[k], ends[k]
        observer = ids[src[a]]
        out.append(CheckedHeartbeat(observer, now, 0.3, observations=tuple(
            Observation(observer, ids[subjects[j]], flags[j], None, None, True) for j in range(a, b))))
    return out, reachable


def run_step(orch: Orchestrator, ids: list[str], licences: dict, obs: Any, tick: int,
             rng: random.Random, form: str) -> tuple[float, dict]:
    intake = take = 0.0
    if form == "registry":
        t0 = time.perf_counter()
        accepted, rejected = orch.registry.accept_all(obs, T0 + tick, trusted=True)
        intake = time.perf_counter() - t0
        if rejected or accepted != len(obs):
            raise SystemExit(f"bench heartbeats refused: {rejected[:3]}")
        t0 = time.perf_counter()
        obs = orch.registry.take_observations()
        take = time.perf_counter() - t0
    nodes = orch.registry.nodes()
    for node in nodes:
        node.status = NodeStatus.ONLINE
    few = max(1, len(nodes) * 3 // 1000)  # 0.3%: 300 of 100,000
    for i in rng.sample(range(len(nodes)), few):
        nodes[i].status = NodeStatus.OFFLINE
    results = [RuleResult("load", nodes[i].id, False, severity=Severity.WARNING)
               for i in rng.sample(range(len(nodes)), few)]
    report = TickReport(tick=tick, started_at=T0 + tick)
    ctx = TickContext(tick=tick, now=T0 + tick, config=orch.config, registry=orch.registry, mesh=orch.mesh,
                      store=None, orchestrator=orch, report=report)
    if isinstance(obs, ObservationBatch):
        ctx.scratch["observations"] = obs
    else:
        ctx.observations = obs  # as the heartbeats carry them
    t0 = time.perf_counter()
    scores = trust_plugin.wyneos_trust(ctx=ctx, nodes=nodes, licences=licences, results=results)
    _apply_trust([("trust", scores)], nodes, report, report.errors, {"trust": "builtin"})
    elapsed = time.perf_counter() - t0
    parts = dict(trust_plugin.state_of(orch).engine.timings)
    return elapsed, {"intake": intake, "take": take, "scored": sum(1 for n in nodes if n.trust is not None), "peer": report.trust["peer"],
                     "tiers": report.trust["tiers"], "parts": parts}


def baseline(n: int, src: np.ndarray, dst: np.ndarray, keep: np.ndarray, tolerance: float,
             teleport: float) -> tuple[float, int]:
    """A plain sparse power iteration over the same edges, from the uniform vector."""
    t0 = time.perf_counter()
    src, dst = src[keep], dst[keep]
    m = sp.csr_array((np.ones(src.size), (src, dst)), shape=(n, n))
    rowsum = np.asarray(m.sum(axis=1)).ravel()
    scale = np.divide(1.0, rowsum, out=np.zeros(n), where=rowsum > 0)
    m = sp.diags_array(scale) @ m
    ct = m.T.tocsr()
    p = np.full(n, 1.0 / n)
    t = p.copy()
    iterations = 0
    for iterations in range(1, 1001):
        new = (1 - teleport) * (ct @ t) + teleport * p
        new += (1.0 - new.sum()) * p
        done = np.abs(new - t).sum() < tolerance
        t = new
        if done:
            break
    return time.perf_counter() - t0, iterations


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--edges", type=int, default=600_000)
    ap.add_argument("--ticks", type=int, default=5, help="timed ticks after the warm-up ticks")
    ap.add_argument("--warmup", type=int, default=5,
                    help="ticks first run untimed (new nodes pass admission, the power iteration warms up)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--form", choices=("registry", "batch", "objects"), default="registry",
                    help="observations through the registry's heartbeat intake (the real tick's path), "
                         "as one ObservationBatch, or as a plain list of Observation objects")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.nodes < 10 or args.edges < 1 or args.ticks < 1:
        ap.error("--nodes must be at least 10, --edges and --ticks at least 1")
    nprng = np.random.default_rng(args.seed)
    rng = random.Random(args.seed)
    orch, ids, licences = build(args.nodes, args.seed)
    settings = trust_plugin.state_of(orch).settings
    src, dst = mesh_edges(nprng, args.nodes, args.edges)
    if args.form == "registry":  # a heartbeat carries one node's observations: its edges together
        order = np.argsort(src, kind="stable")
        src, dst = src[order], dst[order]
        most = int(np.bincount(src).max())
        orch.registry.max_observations = max(orch.registry.max_observations, most)
    steps, bases, iterations, infos = [], [], [], []
    for tick in range(args.warmup + args.ticks):
        obs, keep = observations(nprng, ids, src, dst, args.form, tick + 1)
        elapsed, info = run_step(orch, ids, licences, obs, tick + 1, rng, args.form)
        del obs
        if tick < args.warmup:
            continue
        base, its = baseline(args.nodes, src, dst, keep, settings.tolerance, settings.teleport)
        steps.append(elapsed)
        bases.append(base)
        iterations.append((info["peer"]["iterations"], its))
        infos.append(info)
    step, base = statistics.median(steps), statistics.median(bases)
    last = infos[-1]
    row = {"nodes": args.nodes, "edges": args.edges, "form": args.form, "ticks": args.ticks, "step_s": step, "baseline_s": base,
           "ratio": step / base, "scored": last["scored"], "observations_used": last["peer"]["observations"],
           "iterations": [a for a, _ in iterations], "baseline_iterations": [b for _, b in iterations],
           "tiers": last["tiers"]}
    print(f"{'nodes':>8} {'edges':>8} {'step (s)':>9} {'baseline (s)':>13} {'ratio':>6} {'iters':>6} "
          f"{'base iters':>10} {'scored':>7} {'edges used':>10}")
    print(f"{args.nodes:>8} {args.edges:>8} {step:>9.4f} {base:>13.4f} {step / base:>6.2f} "
          f"{statistics.median(row['iterations']):>6} {statistics.median(row['baseline_iterations']):>10} "
          f"{row['scored']:>7} {row['observations_used']:>10}")
    print(f"tiers after the last tick: {row['tiers']}")
    if args.form == "registry":
        row["intake_s"] = statistics.median(i["intake"] for i in infos)
        row["take_s"] = statistics.median(i["take"] for i in infos)
        print(f"heartbeat step, not in the trust step (median s): Registry.accept_all of {len(np.unique(src))} "
              f"heartbeats with their observations {row['intake_s']:.4f}; take_observations (encoding the "
              f"observations) {row['take_s']:.4f}")
    parts = {k: statistics.median(i["parts"][k] for i in infos) for k in infos[-1]["parts"]}
    row["parts_s"] = parts
    print("inside the engine (median s): " + ", ".join(f"{k} {v:.4f}" for k, v in parts.items())
          + f"; the rest (gathering from the nodes, admission, tiers, applying): {step - sum(parts.values()):.4f}")
    if args.json:
        args.json.write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
