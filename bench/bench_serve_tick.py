"""Benchmark: the tick of ``wyneos serve`` against the orchestrator's own tick at the same size.

``wyneos serve`` runs the orchestrator's tick with three plugins of its own registered
(the agent outbox, the neighbour book that hands agents their signed neighbour lists,
the relay desk) and, after it, publishes the view the read endpoints show and updates
its metrics (``Service.tick_now``). This script measures that whole tick slot against
``bench_tick.py``'s tick with the default outputs (the same fleet, heartbeats, actions
and outputs, built by ``bench_tick.make``), each in a fresh subprocess of the same run:
the ratio is what the service adds.

The service's fleet is ``bench_tick``'s, every node enrolled (a row in ``node_keys``, as
enrolment stores it: one public key for all, whose bytes do not matter to the tick), so
every action's hop to a node goes to that node's outbox as for an agent. Each round
redoes the same work (``bench_tick.next_round``). One more round, untimed, runs with the
plugin manager's trace on: the time of each plugin's hooks (``service_plugins_s``: the
three of the service; ``per_plugin_ms``: every plugin), and the step timings of the report.
``publish_metrics_s`` is what ``tick_now`` spends after the orchestrator's tick (the
view, the metrics, the outbox gauge).

    python bench/bench_serve_tick.py [--sizes 10000 100000 1000000] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_tick as bt  # noqa: E402

from wyneos_core.licensing.keys import fingerprint, generate_key, public_bytes  # noqa: E402
from wyneos_core.service.core import Service  # noqa: E402
from wyneos_core.service.settings import ServiceSettings  # noqa: E402

SERVICE_PLUGINS = ("agent-outbox", "neighbour-book", "relay-desk")
_TRACE = re.compile(r"<- (\w+) \[([^\]]+)\] ([0-9.]+)ms")


def make_service(n: int):
    """``bench_tick``'s fleet of ``n`` nodes (default outputs on), every node enrolled, in a ``Service``."""
    orch, clock, ids, overloaded, silent = bt.make(n, outputs=True)
    store = orch.store
    store.ensure_service_tables()
    raw = public_bytes(generate_key())
    fp = fingerprint(raw)
    store.conn.execute("BEGIN")
    store.conn.executemany("INSERT INTO node_keys VALUES (?,?,?,?,NULL,?)",
                           ((node_id, raw, fp, clock.now, k + 1) for k, node_id in enumerate(ids)))
    store.conn.execute("COMMIT")
    service = Service(orch, ServiceSettings.from_config(orch.config, max_sessions=2 * n))
    return service, clock, ids, overloaded, silent


def time_service(n: int, repeat: int) -> dict:
    service, clock, ids, overloaded, silent = make_service(n)
    orch = service.orchestrator
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for _ in range(orch.config["trust"]["admission"]["probation_ticks"] + 1):  # past probation, as bench_tick
            orch.intake.put_columns(bt.heartbeats(ids, set(), set(), clock.now))
            service.tick_now()
            clock.now += 6
        clock.now += 60
        times, extra, actions = [], [], []
        for k in range(repeat + 1):
            traced = k == repeat  # the last round: per-plugin times (the trace's own cost: not timed)
            if traced:
                orch.pm.trace_file = io.StringIO()
            orch.intake.put_columns(bt.heartbeats(ids, overloaded, silent, clock.now))
            t0 = time.perf_counter()
            report = service.tick_now()
            took = time.perf_counter() - t0
            orch.pm.trace_file, trace = None, orch.pm.trace_file
            if not traced:
                times.append(took)
                extra.append(took - (report.duration_ms + report.timings_ms["report"]) / 1000.0)
                actions.append(len(report.actions))
            timings = dict(report.timings_ms)
            del report
            bt.next_round(orch)
            clock.now += 6
    per_plugin: dict[str, float] = {}
    for hook, plugin, ms in _TRACE.findall(trace.getvalue()):
        per_plugin[plugin] = per_plugin.get(plugin, 0.0) + float(ms)
    service.stop()
    return {"seconds": statistics.median(times), "publish_metrics_s": statistics.median(extra),
            "service_plugins_s": sum(per_plugin.get(p, 0.0) for p in SERVICE_PLUGINS) / 1000.0,
            "per_plugin_ms": {p: round(v, 1) for p, v in sorted(per_plugin.items(), key=lambda kv: -kv[1])},
            "timings_ms": {k: round(v, 1) for k, v in timings.items()}, "actions": max(actions)}


def measure(kind: str, n: int, repeat: int) -> dict:
    if kind == "serve":
        out = time_service(n, repeat)
    else:
        seconds, actions = bt.time_ticks(n, repeat, outputs=True)
        out = {"seconds": seconds, "actions": max(actions)}
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def run_child(kind: str, n: int, repeat: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--sizes", str(n), "--repeat", str(repeat)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", choices=("serve", "tick"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.sizes[0], args.repeat)))
        return
    rows = []
    print(f"{'nodes':>8} {'serve (s)':>10} {'tick (s)':>9} {'ratio':>6} {'plugins (s)':>11} {'publish (s)':>11} "
          f"{'actions':>8} {'serve RSS B/node':>16}")
    for n in args.sizes:
        tick = run_child("tick", n, args.repeat)
        serve = run_child("serve", n, args.repeat)
        if serve["actions"] != tick["actions"]:
            raise SystemExit(f"{n} nodes: the service decided {serve['actions']} actions, the tick {tick['actions']}")
        row = {"nodes": n, "serve_tick_s": serve["seconds"], "tick_outputs_s": tick["seconds"],
               "ratio": serve["seconds"] / tick["seconds"], "service_plugins_s": serve["service_plugins_s"],
               "publish_metrics_s": serve["publish_metrics_s"], "actions": serve["actions"],
               "serve_peak_rss_bytes_per_node": serve["peak_rss_bytes"] / n,
               "tick_peak_rss_bytes_per_node": tick["peak_rss_bytes"] / n,
               "per_plugin_ms": serve["per_plugin_ms"], "timings_ms": serve["timings_ms"]}
        rows.append(row)
        print(f"{n:>8} {row['serve_tick_s']:>10.3f} {row['tick_outputs_s']:>9.3f} {row['ratio']:>6.2f} "
              f"{row['service_plugins_s']:>11.3f} {row['publish_metrics_s']:>11.3f} {row['actions']:>8} "
              f"{row['serve_peak_rss_bytes_per_node']:>16.0f}", flush=True)
        if args.json:  # written after each size: a long run keeps what it measured
            args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
