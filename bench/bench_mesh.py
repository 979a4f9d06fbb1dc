"""Benchmark: memory and build time of the mesh, and one routing tree over it.

Per size, in a fresh subprocess each (so one size's memory cannot hide another's):

* ``build_s``: ``build_topology`` of a small-world mesh (degree 4, 8 origin links) of
  that many nodes, the node names made beforehand (they belong to the node table);
* ``rss_bytes_per_node``: the growth of the process's peak RSS (``ru_maxrss``) across
  the build, divided by the nodes;
* ``traced_bytes_per_node`` / ``traced_peak_bytes_per_node``: what ``tracemalloc``
  counts as held by the mesh after the build, and at the build's peak (a second build
  in the same subprocess, traced: tracing slows it down, so it is not timed);
* ``tree_s``, ``tree_again_s``: a routing tree avoiding 1% of the nodes (as offline),
  after isolating 0.1% of them: the first after the build (it may make the arrays the
  searches use), and the next one.

    python bench/bench_mesh.py [--sizes 100000 1000000] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {"topology": "small_world", "degree": 4, "rewire": 0.1, "origin_links": 8, "seed": 1}


def measure(n: int) -> dict[str, float]:
    from wyneos_core.mesh import build_topology

    ids = [f"node-{i:07d}" for i in range(n)]
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    mesh = build_topology(ids, SETTINGS)
    built = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    for node_id in ids[:: 1000]:
        mesh.isolate(node_id)
    avoid = dict.fromkeys(ids[7::100], "offline")
    t0 = time.perf_counter()
    tree = mesh.routing_tree(avoid)
    tree_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tree = mesh.routing_tree(avoid)
    tree_again_s = time.perf_counter() - t0
    reached = len(tree.parent)
    del mesh, tree
    gc.collect()
    tracemalloc.start()
    mesh = build_topology(ids, SETTINGS)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"nodes": n, "build_s": round(built, 3), "rss_bytes_per_node": round(rss / n),
            "traced_bytes_per_node": round(current / n), "traced_peak_bytes_per_node": round(peak / n),
            "tree_s": round(tree_s, 4), "tree_again_s": round(tree_again_s, 4), "reached": reached}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the subprocess's own size
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0
    results = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], check=True, capture_output=True,
                             text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        print(f"{n:>9,} nodes: build {r['build_s']:.2f} s, peak RSS +{r['rss_bytes_per_node']} B/node, "
              f"traced {r['traced_bytes_per_node']} B/node (peak {r['traced_peak_bytes_per_node']}), "
              f"routing tree {r['tree_s'] * 1000:.0f} ms (first), {r['tree_again_s'] * 1000:.0f} ms (next)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
