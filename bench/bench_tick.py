"""Benchmark: one full tick with the builtin plugins at 1k, 10k and 100k nodes.

Every builtin plugin runs, the licence step included. Each size is timed twice: without
outputs, and with the default outputs on (the summary printed to stdout, here sent to
/dev/null, the JSON report file and the SQLite state file). The licence step included: nodes share signed licences
(one per 100 nodes) from the builtin file source; after the first tick their results
come from the licence cache, as in a running cluster.

Baseline: a hand-written plain loop doing the same work on plain dicts in the same
run (heartbeat checks and intake, status derivation, a licence cache lookup per node,
one result per (rule, node) for the two builtin governance rules, healing,
de-duplication, one BFS routing tree over the same adjacency and delivery of the
actions along it). The ratio tick / baseline is what to watch; absolute times
depend on the machine.

    python bench/bench_tick.py [--sizes 1000 10000 100000] [--repeat 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import math
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wyneos_core.config import load_config  # noqa: E402
from wyneos_core.licensing.document import issue_licence  # noqa: E402
from wyneos_core.licensing.keys import generate_key, write_public_key  # noqa: E402
from wyneos_core.model import ORIGIN, Heartbeat  # noqa: E402
from wyneos_core.tick import Orchestrator  # noqa: E402


KEY = generate_key()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


T0 = 1_700_000_000.0
WORK = Path(tempfile.mkdtemp(prefix="wyneos-bench-"))


def licences(n: int) -> int:
    """Write signed licences for ``n`` nodes (one per 100) once; return how many."""
    count = max(1, n // 100)
    root = WORK / "licences"
    if not (WORK / "issuer.pub").exists():
        write_public_key(WORK / "issuer.pub", KEY)
        root.mkdir()
    for i in range(count):
        path = root / f"lic-{i:05d}.licence"
        if not path.exists():
            doc = issue_licence(KEY, licence_id=f"lic-{i:05d}", customer="acme", issued=T0 - 86400,
                                expires=T0 + 365 * 86400)
            path.write_text(json.dumps(doc))
    return count


def make(n: int, seed: int = 1, outputs: bool = False):
    """An orchestrator of ``n`` nodes; with ``outputs`` the default outputs are on: the
    summary on stdout (sent to /dev/null by the caller), the JSON report file and the
    SQLite state file, all in a scratch directory."""
    ids = [f"node-{i:06d}" for i in range(n)]
    count = licences(n)
    text = (
        "heartbeat: {stale_after: 18, offline_after: 48}\n"
        "mesh: {topology: small_world, degree: 4, seed: 1}\n"
        + (f"report: {{stdout: summary, json_path: {WORK / f'report-{n}.json'}}}\n"
           f"state: {{path: {WORK / f'state-{n}.db'}}}\n" if outputs else
           "report: {stdout: none, json_path: null}\n")
        + f"licence: {{directory: {WORK / 'licences'}, trusted_keys: [{WORK / 'issuer.pub'}], customer: acme, "
        "cache_ttl: 3600, rescan: 3600}\n"
    )
    config = load_config(text=text)
    config.data["nodes"] = [{"id": i, "licence": f"lic-{k % count:05d}", "fingerprint": None, "metadata": {}}
                            for k, i in enumerate(ids)]
    clock = Clock()
    orch = Orchestrator(config, clock=clock, load_entrypoints=False, store=outputs)
    rng = random.Random(seed)
    overloaded = set(rng.sample(ids, n // 100))
    silent = set(rng.sample(ids, n // 200))
    return orch, clock, ids, overloaded, silent


def heartbeats(ids, overloaded, silent, now):
    return [Heartbeat(i, now, 0.95 if i in overloaded else 0.4) for i in ids if i not in silent]


def time_ticks(n: int, repeat: int, outputs: bool = False) -> tuple[float, int]:
    orch, clock, ids, overloaded, silent = make(n, outputs=outputs)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return _time_ticks(orch, clock, ids, overloaded, silent, repeat)


def _time_ticks(orch, clock, ids, overloaded, silent, repeat: int) -> tuple[float, int]:
    # warm-up tick with everyone reporting; then the silent ones go quiet for 60 s
    orch.intake.put_many(heartbeats(ids, set(), set(), clock.now))
    orch.tick()
    clock.now += 60
    times = []
    actions = 0
    for _ in range(repeat):
        batch = heartbeats(ids, overloaded, silent, clock.now)
        orch.intake.put_many(batch)
        t0 = time.perf_counter()
        report = orch.tick()
        times.append(time.perf_counter() - t0)
        assert not any(not r.valid for r in report.licences.values()), "bench licences must be valid"
        actions = max(actions, len(report.actions))
        orch._decide_state = None  # type: ignore[attr-defined]  # same work every round: actions are new again
        for node_id in list(orch.mesh.isolated):
            orch.mesh.reinstate(node_id)
            orch.registry[node_id].isolated = False
        clock.now += 6
    return statistics.median(times), actions


def baseline(n: int, repeat: int) -> float:
    """The same work as a plain loop over dicts (no plugins, no objects per result)."""
    orch, clock, ids, overloaded, silent = make(n)
    adj = {v: list(orch.mesh.graph.adj[v]) for v in orch.mesh.graph}
    nodes = {i: {"last_seen": clock.now, "load": 0.4, "status": "online", "metadata": {},
                 "licence": orch.registry[i].licence_ref} for i in ids}
    licence_cache = {i: ((node["licence"], None, None), ("valid", "ok")) for i, node in nodes.items()}
    clock.now += 60
    times = []
    for _ in range(repeat):
        batch = heartbeats(ids, overloaded, silent, clock.now)
        t0 = time.perf_counter()
        now = clock.now
        for hb in batch:  # checks + intake
            node = nodes.get(hb.node_id)
            if node is None or not math.isfinite(hb.timestamp) or hb.timestamp > now + 30:
                continue
            if not isinstance(hb.load, float) or not 0 <= hb.load <= 64:
                continue
            node["last_seen"] = hb.timestamp
            node["load"] = hb.load
        changes = 0
        for node in nodes.values():  # status
            age = now - node["last_seen"]
            status = "online" if age <= 18 else "stale" if age <= 48 else "offline"
            if status != node["status"]:
                node["status"] = status
                changes += 1
        licence_results = []
        for node_id, node in nodes.items():  # licence: one cache lookup per node
            key, result = licence_cache[node_id]
            if key == (node["licence"], None, None):
                licence_results.append(result)
        results = []
        for node_id, node in nodes.items():  # governance: one result per (rule, node)
            fresh = node["status"] == "online"
            results.append(("heartbeat-fresh", node_id, fresh, "" if fresh else "no fresh heartbeat"))
            below = node["load"] < 0.9
            results.append(("load-threshold", node_id, below, "" if below else "load above the overload threshold"))
        proposed = {}
        for node_id, node in nodes.items():  # healing
            if node["status"] == "offline":
                proposed[("isolate", node_id)] = "offline"
            elif node["load"] > 0.9:
                proposed[("reduce_load", node_id)] = "overloaded"
        unhealthy = sum(1 for node in nodes.values() if node["status"] != "online")
        decided = []
        isolations = 0
        for (kind, target), reason in proposed.items():  # decide
            if kind == "isolate":
                if unhealthy / n > 0.55 or isolations >= 10:
                    continue
                isolations += 1
            decided.append((kind, target))
        parent = {ORIGIN: None}  # one BFS routing tree avoiding offline nodes
        queue = deque([ORIGIN])
        while queue:
            v = queue.popleft()
            for w in adj[v]:
                if w not in parent and (w == ORIGIN or nodes[w]["status"] != "offline"):
                    parent[w] = v
                    queue.append(w)
        delivered = 0
        for kind, target in decided:  # deliver along the tree
            targets = [target] + ([w for w in adj[target] if w != ORIGIN] if kind == "isolate" else [])
            for t in targets:
                v = t
                hops = []
                while v in parent and parent[v] is not None:
                    hops.append(v)
                    v = parent[v]
                delivered += bool(hops)
        times.append(time.perf_counter() - t0)
        clock.now += 6
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    print(f"{'nodes':>8} {'tick (s)':>10} {'+outputs (s)':>13} {'baseline (s)':>13} {'ratio':>7} "
          f"{'ratio+out':>9} {'actions':>8}")
    for n in args.sizes:
        tick, actions = time_ticks(n, args.repeat)
        full, _ = time_ticks(n, args.repeat, outputs=True)
        base = baseline(n, args.repeat)
        rows.append({"nodes": n, "tick_s": tick, "tick_with_outputs_s": full, "baseline_s": base,
                     "ratio": tick / base, "ratio_with_outputs": full / base, "actions": actions})
        print(f"{n:>8} {tick:>10.4f} {full:>13.4f} {base:>13.4f} {tick / base:>7.2f} {full / base:>9.2f} "
              f"{actions:>8}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
