"""Benchmark: the time of each step of a running cluster's tick with the default outputs.

``bench_tick.py`` times whole ticks, resetting the decide state every round so every
round does the same work. This one lets the cluster run as it would: the same
``bench_tick`` cluster (heartbeats as columns, 1% of the nodes silent and 1% overloaded
after the first tick, the default outputs on: summary to /dev/null, the JSON report file
and the SQLite state file), six ticks in a row, and prints the median over ticks 3 to 6
of each step's time as the tick report gives it (``timings_ms``; ``report`` is every
``wyneos_tick_report`` hook: summary, report file, state and trust writes). Those ticks
include the one in which the whole fleet leaves admission (nodes enrolled in bulk are
not declared, so they start in probation).

    python bench/bench_tick_steps.py --nodes 100000

Compare two versions in one run by alternating them (the machine's load moves).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_tick  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--ticks", type=int, default=6)
    args = ap.parse_args()
    orch, clock, ids, overloaded, silent = bench_tick.make(args.nodes, outputs=True)
    rows = []
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for r in range(args.ticks):
            first = r == 0
            orch.intake.put_columns(bench_tick.heartbeats(ids, set() if first else overloaded,
                                                          set() if first else silent, clock.now))
            report = orch.tick()
            rows.append(dict(report.timings_ms, total=report.duration_ms))
            clock.now += 60 if first else 6
    orch.stop()
    timed = rows[2:]
    print(json.dumps({k: round(statistics.median(r.get(k, 0.0) for r in timed), 1) for k in rows[-1]}))


if __name__ == "__main__":
    main()
