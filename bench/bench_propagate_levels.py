"""Benchmark: the propagate step inside the whole tick, at fleet sizes, batched or per hop.

Runs ``bench_tick``'s cluster (default outputs on, 1% of the nodes silent and 1%
overloaded, the decide state emptied every round so every round carries the same new
actions: about 1% of the fleet) and prints, per round after the warm-up, the tick's own
timing of the ``propagate`` step (``report.timings_ms``), the whole tick, the actions and
the deliveries, and the CPU time of the builtin step in this process (``time.process_time``:
on a shared machine the other jobs stretch wall time, not CPU time). The median over
``--repeat`` rounds is printed as JSON.

``--per-hop`` registers a plugin implementing the per-hop ``wyneos_deliver`` (it passes
every hop on, so the builtin transport still acknowledges it): the builtin batch
transport then calls that hook once per hop, as every hop was carried before batches.
The script only uses ``bench_tick``, so it runs unchanged in a checkout of an older
version (before batches: ``--per-hop`` changes nothing there) for a same-machine
comparison; alternate the versions, the machine's load moves.

    python bench/bench_propagate_levels.py --nodes 100000 [--repeat 3] [--per-hop]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_tick  # noqa: E402

from wyneos_core import hookimpl  # noqa: E402


class PerHop:
    """A per-hop transport that passes every hop on (the builtin one acknowledges it)."""

    @hookimpl
    def wyneos_deliver(self, receiver: str) -> None:
        return None


def timed_propagate(orch) -> list[float]:
    """Time the builtin ``wyneos_propagate`` in CPU seconds of this process (the other
    jobs of a shared machine stretch wall time, not this)."""
    [impl] = [i for i in orch.pm.hook.wyneos_propagate.get_hookimpls() if i.plugin_name == "propagate"]
    step, cpu = impl.function, []

    def timed(**kwargs):
        c0 = time.process_time()
        try:
            return step(**kwargs)
        finally:
            cpu.append(time.process_time() - c0)

    impl.function = timed
    return cpu


def run(nodes: int, repeat: int, per_hop: bool) -> dict:
    orch, clock, ids, overloaded, silent = bench_tick.make(nodes, outputs=True)
    if per_hop:
        orch.pm.register(PerHop(), "per-hop")
    cpu = timed_propagate(orch)
    rows = []
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for _ in range(orch.config["trust"]["admission"]["probation_ticks"] + 1):
            orch.intake.put_columns(bench_tick.heartbeats(ids, set(), set(), clock.now))
            orch.tick()
            clock.now += 6
        clock.now += 60
        for _ in range(repeat):
            orch.intake.put_columns(bench_tick.heartbeats(ids, overloaded, silent, clock.now))
            t0 = time.perf_counter()
            report = orch.tick()
            tick_s = time.perf_counter() - t0
            rows.append({"propagate_s": report.timings_ms["propagate"] / 1000, "propagate_cpu_s": cpu[-1],
                         "tick_outputs_s": tick_s,
                         "actions": len(report.actions), "deliveries": len(report.deliveries)})
            bench_tick.next_round(orch)
            clock.now += 6
    orch.stop()
    shutil.rmtree(bench_tick.WORK, ignore_errors=True)  # its state and report files: up to 300 MB at 1M
    out = {k: round(statistics.median(r[k] for r in rows), 4) for k in rows[0]}
    return {"nodes": nodes, "per_hop": per_hop, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--per-hop", action="store_true")
    args = ap.parse_args()
    print(json.dumps(run(args.nodes, args.repeat, args.per_hop)))


if __name__ == "__main__":
    main()
