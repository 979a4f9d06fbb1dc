"""Benchmark: one full tick with the builtin plugins at 1k, 10k, 100k (and 1M) nodes.

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

A second baseline, the numpy floor, does the same work hand-written over numpy columns
(heartbeat checks and scatter by slot, status by comparison, licence results gathered
by index, the two rules as masks, healing and decide on the few rows a mask picks, one
breadth-first tree over a CSR adjacency with scipy, delivery along it): the fastest
honest way to do this tick's work in Python, the bar a columnar core is held to.

The nodes are enrolled in bulk (``Registry.register_many``: as a fleet enrolled through
the service, not a config list of a million node dicts) and placed in the small-world
mesh the config's ``mesh`` section gives. Enrolled nodes go through trust admission
(config nodes do not): the warm-up ticks run until they are past their probation
(``trust.admission.probation_ticks``), as in a fleet that has been running. Heartbeats reach the tick as one batch of
columns (``HeartbeatColumns`` through ``intake.put_columns``, as a relay or the session
route hands them over); the two baselines take the same batch: the plain loop walks it
node by node, the numpy floor reads its arrays.

Each round redoes the same work: the overloaded and silent nodes are the same, the
isolated ones are reinstated by hand, and the decide step is given an empty state in
memory (``DecideState()``), so every action is new again, as in a tick where these
problems first appear. (It used to be set to None, which made decide read its state
back from the state file every round: work no running orchestrator does per tick.)

Every (size, measurement) runs in a fresh subprocess, so its peak resident memory
(``ru_maxrss``) is that of the measurement alone: ``peak_rss_bytes_per_node`` is the
peak of the process that ran the tick with the default outputs, divided by the nodes.

    python bench/bench_tick.py [--sizes 1000 10000 100000 1000000] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import atexit
import resource
import subprocess
import contextlib
import json
import os
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wyneos_core.builtin.decide import DecideState  # noqa: E402
from wyneos_core.config import load_config  # noqa: E402
from wyneos_core.intake import HeartbeatColumns  # noqa: E402
from wyneos_core.licensing.document import issue_licence  # noqa: E402
from wyneos_core.licensing.keys import generate_key, write_public_key  # noqa: E402
from wyneos_core.mesh import build_topology  # noqa: E402
from wyneos_core.model import ORIGIN  # noqa: E402
from wyneos_core.tick import Orchestrator  # noqa: E402


KEY = generate_key()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


T0 = 1_700_000_000.0
WORK = Path(tempfile.mkdtemp(prefix="wyneos-bench-"))
# each process removes its scratch directory (a 1M run leaves 300 MB of state and report)
atexit.register(shutil.rmtree, WORK, ignore_errors=True)


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
    clock = Clock()
    orch = Orchestrator(config, clock=clock, load_entrypoints=False, store=outputs)
    orch.registry.register_many(ids, now=clock.now, licence_refs=[f"lic-{k % count:05d}" for k in range(n)])
    orch.mesh = build_topology(ids, config["mesh"])
    rng = random.Random(seed)
    overloaded = set(rng.sample(ids, n // 100))
    silent = set(rng.sample(ids, n // 200))
    return orch, clock, ids, overloaded, silent


def heartbeats(ids, overloaded, silent, now) -> HeartbeatColumns:
    """One round's heartbeats as columns: every node but the silent ones, loaded 0.4 (0.95
    the overloaded ones), sent ``now``."""
    reporting = [i for i in ids if i not in silent]
    load = np.full(len(reporting), 0.4)
    load[[k for k, i in enumerate(reporting) if i in overloaded]] = 0.95
    return HeartbeatColumns(reporting, np.full(len(reporting), float(now)), load)


def time_ticks(n: int, repeat: int, outputs: bool = False) -> tuple[float, list[int]]:
    orch, clock, ids, overloaded, silent = make(n, outputs=outputs)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return _time_ticks(orch, clock, ids, overloaded, silent, repeat)


def _time_ticks(orch, clock, ids, overloaded, silent, repeat: int) -> tuple[float, list[int]]:
    # warm-up ticks with everyone reporting, until enrolled nodes are past their probation
    # (trust admission: a fleet in its steady state); then the silent ones go quiet for 60 s
    for _ in range(orch.config["trust"]["admission"]["probation_ticks"] + 1):
        orch.intake.put_columns(heartbeats(ids, set(), set(), clock.now))
        orch.tick()
        clock.now += 6
    clock.now += 60
    times = []
    actions: list[int] = []  # per round: the same work each round gives the same count
    for _ in range(repeat):
        # the batch and the report are not held here through the next tick (as a running
        # orchestrator: the queue hands the batch over, last_report keeps the report)
        orch.intake.put_columns(heartbeats(ids, overloaded, silent, clock.now))
        t0 = time.perf_counter()
        report = orch.tick()
        times.append(time.perf_counter() - t0)
        # the results that are not plainly valid (invalid or in grace), read from the licence
        # columns: no result object per node (``report.licences.values()`` made a dict and a
        # result of every node, kept by the licence step, about 220 B a node at 1,000,000)
        assert not any(not r.valid for r in report.licence_problems()), "bench licences must be valid"
        actions.append(len(report.actions))
        del report
        next_round(orch)
        clock.now += 6
    return statistics.median(times), actions


def next_round(orch) -> None:
    """The same work every round: last round's actions are new again and its isolated
    nodes are back in the mesh."""
    orch._decide_state = DecideState()  # type: ignore[attr-defined]
    for node_id in list(orch.mesh.isolated):
        orch.mesh.reinstate(node_id)
        orch.registry[node_id].isolated = False


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
        for node_id, ts, ld in zip(batch.node_ids, batch.timestamp.tolist(), batch.load.tolist()):  # intake
            node = nodes.get(node_id)
            if node is None or not math.isfinite(ts) or ts > now + 30:
                continue
            if not 0 <= ld <= 64:
                continue
            node["last_seen"] = ts
            node["load"] = ld
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


def numpy_floor(n: int, repeat: int) -> float:
    """The same work as ``baseline`` hand-written over numpy columns (see the docstring)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order

    orch, clock, ids, overloaded, silent = make(n)
    names = [ORIGIN, *ids]
    slot_of = {name: i for i, name in enumerate(names)}
    graph = orch.mesh.graph
    rows, cols = [], []
    for v, nbrs in graph.adjacency():
        i = slot_of[v]
        for w in nbrs:
            rows.append(i)
            cols.append(slot_of[w])
    rows_a, cols_a = np.asarray(rows, np.int32), np.asarray(cols, np.int32)
    size = len(names)
    full = csr_matrix((np.ones(len(rows_a), np.int8), (rows_a, cols_a)), shape=(size, size))
    last_seen = np.full(size, clock.now)
    load = np.full(size, 0.4)
    status = np.zeros(size, np.int8)  # 0 online, 1 stale, 2 offline
    licence_of = np.arange(size, dtype=np.int32) % max(1, n // 100)
    licence_valid = np.ones(max(1, n // 100), bool)
    clock.now += 60
    times = []
    for _ in range(repeat):
        batch = heartbeats(ids, overloaded, silent, clock.now)
        t0 = time.perf_counter()
        now = clock.now
        count = len(batch)  # checks + intake: the batch's columns, checked and scattered
        slots = np.fromiter(map(slot_of.get, batch.node_ids), np.int64, count)
        ts, ld = batch.timestamp, batch.load
        ok = np.isfinite(ts) & (ts <= now + 30) & (ld >= 0) & (ld <= 64)
        last_seen[slots[ok]] = ts[ok]
        load[slots[ok]] = ld[ok]
        age = now - last_seen  # status
        new = np.where(age <= 18, 0, np.where(age <= 48, 1, 2)).astype(np.int8)
        new[0] = 0
        changes = int(np.count_nonzero(new != status))
        status = new
        valid = licence_valid[licence_of]  # licence: one gather
        fresh = status == 0  # governance: two rules as masks, failures only as rows
        below = load < 0.9
        failed = [("heartbeat-fresh", names[i]) for i in np.flatnonzero(~fresh)]
        failed += [("load-threshold", names[i]) for i in np.flatnonzero(~below)]
        summary = {"heartbeat-fresh": int(fresh.sum()), "load-threshold": int(below.sum())}
        offline = np.flatnonzero(status == 2)  # healing
        hot = np.flatnonzero((status != 2) & (load > 0.9))
        unhealthy = int(np.count_nonzero(status[1:] != 0))
        decided = [("reduce_load", i) for i in hot.tolist()]  # decide
        if unhealthy / n <= 0.55:
            decided += [("isolate", i) for i in offline[:10].tolist()]
        blocked = status == 2  # one BFS tree over the CSR adjacency, offline vertices not entered
        keep = ~blocked[rows_a] & ~blocked[cols_a]
        adj = csr_matrix((np.ones(int(keep.sum()), np.int8), (rows_a[keep], cols_a[keep])), shape=(size, size))
        _, parent = breadth_first_order(adj, 0, directed=True, return_predecessors=True)
        delivered = 0
        for kind, target in decided:  # deliver along the tree
            near = full.indices[full.indptr[target]:full.indptr[target + 1]].tolist() if kind == "isolate" else []
            targets = [target, *(w for w in near if w != 0)]
            for t in targets:
                v = t
                hops = []
                while v > 0 and parent[v] >= 0:
                    hops.append(v)
                    v = parent[v]
                delivered += bool(hops)
        times.append(time.perf_counter() - t0)
        clock.now += 6
        assert changes >= 0 and valid.all() and failed and summary
    return statistics.median(times)


MEASURES = ("tick", "outputs", "plain", "numpy")


def measure(kind: str, n: int, repeat: int) -> dict:
    """One measurement in this process: its median seconds and this process's peak RSS."""
    actions = None
    if kind == "tick":
        seconds, actions = time_ticks(n, repeat)
    elif kind == "outputs":
        seconds, actions = time_ticks(n, repeat, outputs=True)
    elif kind == "plain":
        seconds = baseline(n, repeat)
    else:
        seconds = numpy_floor(n, repeat)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"seconds": seconds, "peak_rss_bytes": rss, "actions": max(actions) if actions else None,
            "actions_per_round": actions}


def run_child(kind: str, n: int, repeat: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--sizes", str(n), "--repeat", str(repeat)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", choices=MEASURES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.sizes[0], args.repeat)))
        return
    rows = []
    print(f"{'nodes':>8} {'tick (s)':>9} {'+outputs':>9} {'plain (s)':>10} {'numpy (s)':>10} {'/plain':>7} "
          f"{'/numpy':>7} {'out/numpy':>9} {'RSS B/node':>10} {'actions':>8}")
    for n in args.sizes:
        got = {kind: run_child(kind, n, args.repeat) for kind in MEASURES}
        tick, full = got["tick"]["seconds"], got["outputs"]["seconds"]
        plain, floor = got["plain"]["seconds"], got["numpy"]["seconds"]
        row = {"nodes": n, "tick_s": tick, "tick_outputs_s": full, "plain_loop_s": plain, "numpy_floor_s": floor,
               "ratio_plain": tick / plain, "ratio_outputs_plain": full / plain, "ratio_numpy": tick / floor,
               "ratio_outputs_numpy": full / floor,
               "peak_rss_bytes_per_node": got["outputs"]["peak_rss_bytes"] / n,
               "peak_rss_tick_bytes_per_node": got["tick"]["peak_rss_bytes"] / n,
               "peak_rss_numpy_bytes_per_node": got["numpy"]["peak_rss_bytes"] / n,
               "actions": got["outputs"]["actions"]}
        rows.append(row)
        print(f"{n:>8} {tick:>9.4f} {full:>9.4f} {plain:>10.4f} {floor:>10.4f} {tick / plain:>7.2f} "
              f"{tick / floor:>7.2f} {full / floor:>9.2f} {row['peak_rss_bytes_per_node']:>10.0f} "
              f"{row['actions']:>8}", flush=True)
        if args.json:  # written after each size: a long run keeps what it measured
            args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
