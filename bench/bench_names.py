"""Benchmark: node names to slots, a ``dict`` against ``NameIndex`` (wyneos_core.names).

For N names (``node-000000``...) held in one list by slot, it measures what the index
costs on top of that list (tracemalloc, bytes per name: the dict's entries and its
``int`` values, or the index's hash table and hash column), one lookup at a time
(``get``, as ``registry.get`` does), and a bulk lookup of every name in shuffled order
(``np.fromiter(map(index.__getitem__, ...))`` for the dict, ``NameIndex.numbers`` for
the index; a heartbeat batch's way). The names themselves are the same objects in both.

    python bench/bench_names.py [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wyneos_core.names import NameIndex  # noqa: E402


def traced(build):
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    made = build()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return made, after - before, peak - before


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(n: int) -> dict:
    names = [f"node-{i:06d}" for i in range(n)]
    for name in names:
        hash(name)  # the string caches its hash: both sides alike
    queries = names[:]
    random.Random(1).shuffle(queries)
    few = queries[:20_000]
    # the int values are made in the build, as the node table made them (range)
    d, d_bytes, d_peak = traced(lambda: dict(zip(names, range(n))))
    x, x_bytes, x_peak = traced(lambda: NameIndex(names))
    out = {"names": n, "dict_bytes_per_name": d_bytes / n, "index_bytes_per_name": x_bytes / n,
           "dict_build_peak_per_name": d_peak / n, "index_build_peak_per_name": x_peak / n}
    get_d, get_x = d.get, x.get
    out["dict_get_ns"] = best(lambda: [get_d(q) for q in few]) / len(few) * 1e9
    out["index_get_ns"] = best(lambda: [get_x(q) for q in few]) / len(few) * 1e9
    out["dict_bulk_ns"] = best(lambda: np.fromiter(map(d.__getitem__, queries), np.int64, n)) / n * 1e9
    out["index_bulk_ns"] = best(lambda: x.numbers(queries)) / n * 1e9
    assert x.numbers(queries).tolist() == [d[q] for q in queries]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = ap.parse_args()
    print(f"{'names':>9} {'dict B':>7} {'index B':>8} {'dict get':>9} {'index get':>10} "
          f"{'dict bulk':>10} {'index bulk':>11}   (bytes per name; ns per lookup)")
    for n in args.sizes:
        r = run(n)
        print(f"{n:>9} {r['dict_bytes_per_name']:>7.1f} {r['index_bytes_per_name']:>8.1f} "
              f"{r['dict_get_ns']:>9.0f} {r['index_get_ns']:>10.0f} {r['dict_bulk_ns']:>10.0f} "
              f"{r['index_bulk_ns']:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
