"""Benchmark: the CPU time of each step of the tick with the default outputs.

The rounds of ``bench_tick.py`` (the same cluster, the decide state emptied after every
round so every round issues the same new actions: about 1% of the fleet), timed with
the process's CPU clock (``time.process_time``) around each hook call instead of the
wall clock: on a machine shared with other work the wall time of a step moves with the
load, its CPU time much less. Prints the median over the rounds of each step's CPU
milliseconds (``tick_report`` is every ``wyneos_tick_report`` hook: summary, report
file, state and trust writes) and of the whole tick.

    python bench/bench_tick_cpu.py --nodes 100000 --rounds 4

Compare two versions by running each in turn, several times (a checkout each).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_tick  # noqa: E402


STEPS = ("heartbeat", "licence_validate", "governance", "trust", "healing", "enforcement", "decide", "propagate",
         "tick_report")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    orch, clock, ids, overloaded, silent = bench_tick.make(args.nodes, outputs=True)
    spent: dict[str, float] = {}
    call_each = orch.pm.call_each

    def timed(hook: str, *a, **k):  # the CPU time of every call of each hook
        t0 = time.process_time()
        try:
            return call_each(hook, *a, **k)
        finally:
            name = hook.removeprefix("wyneos_")
            spent[name] = spent.get(name, 0.0) + (time.process_time() - t0) * 1000

    orch.pm.call_each = timed  # type: ignore[method-assign]
    rows = []
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for _ in range(orch.config["trust"]["admission"]["probation_ticks"] + 1):  # as bench_tick's warm-up
            orch.intake.put_columns(bench_tick.heartbeats(ids, set(), set(), clock.now))
            orch.tick()
            clock.now += 6
        clock.now += 60
        for _ in range(args.rounds):
            orch.intake.put_columns(bench_tick.heartbeats(ids, overloaded, silent, clock.now))
            spent.clear()
            t0 = time.process_time()
            orch.tick()
            rows.append({**spent, "total": (time.process_time() - t0) * 1000})
            bench_tick.next_round(orch)
            clock.now += 6
    orch.stop()
    print(json.dumps({k: round(statistics.median(r.get(k, 0.0) for r in rows), 1) for k in (*STEPS, "total")}))


if __name__ == "__main__":
    main()
