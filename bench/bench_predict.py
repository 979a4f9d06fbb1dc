"""Benchmark: the predict step at 100,000 nodes x 8 metrics (800,000 series).

What is timed is the builtin ``predict`` plugin's ``wyneos_predict`` hook, called as
the tick calls it: taking the tick's metrics from the registry (one heartbeat's
``{name: value}`` per node, as intake leaves them), writing them into the values
column, stepping every detector column (anomaly score, forecast, change points: 128
bytes per series) and answering ``Predictions``. The heartbeats are accepted into the
registry outside the timing (that is the heartbeat step's cost). ``--step-only`` times
``Columns.step`` on a ready values column alone.

Baseline, measured in the same run: one exponentially weighted mean and variance
update over the same 800,000 values in plain numpy (float64, three array expressions):
the least an online detector must do per sample. The ratio step / baseline is what to
watch; the target is the step under 0.15 s per tick at the default size.

    python bench/bench_predict.py [--nodes 100000] [--metrics 8] [--ticks 5] [--warmup 3]
                                  [--share 1.0] [--daily 0] [--step-only] [--json FILE]

``--share`` is the fraction of nodes whose heartbeat arrives in each tick (1.0: all);
``--daily N`` declares the first N metrics ``seasonal: daily`` (with ``--step-only`` the
same values also step columns without seasonality, in turn, for a same-run ratio) (their daily profile is
updated every tick; the ticks are 10 s apart and, with the default warm-up, the first
timed one begins an hour: a sixth of the seasonal series close the hour before into
their profile there, the next sixth a minute later, and so on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wyneos_core.builtin import predict as predict_plugin  # noqa: E402
from wyneos_core.config import Config  # noqa: E402
from wyneos_core.intake import CheckedHeartbeat  # noqa: E402
from wyneos_core.model import TickReport  # noqa: E402
from wyneos_core.predict.detector import BYTES_PER_SERIES, Columns  # noqa: E402
from wyneos_core.tick import Orchestrator, TickContext  # noqa: E402

T0 = 1_700_002_800.0 - 40.0  # the first timed tick (after 3 warm-up ticks) begins an hour


def baseline(values: np.ndarray, mean: np.ndarray, var: np.ndarray) -> None:
    d = values - mean
    mean += 0.01 * d
    var *= 0.99
    var += 0.0099 * d * d


def build(nodes: int, metrics: int, daily: int = 0) -> tuple[Orchestrator, list[str], list[str]]:
    config = Config.defaults()
    names = [f"m{j}" for j in range(metrics)]
    config.data["telemetry"]["metrics"] = [{"name": n, "unit": "", "min": -1e9, "max": 1e9,
                                            "seasonal": "daily" if j < daily else "none"}
                                           for j, n in enumerate(names)]
    orch = Orchestrator(config, store=False, load_entrypoints=False, clock=lambda: T0)
    ids = [f"node-{i:06d}" for i in range(nodes)]
    for node_id in ids:
        orch.registry.register(node_id, now=T0)
    return orch, ids, names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--metrics", type=int, default=8)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--share", type=float, default=1.0)
    parser.add_argument("--daily", type=int, default=0)
    parser.add_argument("--step-only", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(1)
    orch, ids, names = build(args.nodes, args.metrics, args.daily)
    series = args.nodes * args.metrics
    level = rng.uniform(0.1, 0.9, size=(args.nodes, args.metrics))
    mean = np.zeros(series)
    var = np.zeros(series)
    step_ms, base_ms = [], []
    cols = Columns.empty(series, pattern=np.arange(args.metrics) < args.daily)
    # with --step-only --daily N, the same values also step columns without seasonality, in turn
    plain = Columns.empty(series) if args.step_only and args.daily else None
    plain_ms: list[float] = []
    for tick in range(args.warmup + args.ticks):
        now = T0 + 10.0 * (tick + 1)
        sample = np.clip(level + rng.normal(0, 0.02, size=level.shape), 0, 1)
        flat = sample.ravel()
        present = np.ones(series, dtype=bool)
        if args.share < 1.0:
            present = np.repeat(rng.random(args.nodes) < args.share, args.metrics)
        if args.step_only:
            started = time.perf_counter()
            cols.step(np.where(present, flat, np.nan), present, now)
            elapsed = time.perf_counter() - started
            if plain is not None:
                started = time.perf_counter()
                plain.step(np.where(present, flat, np.nan), present, now)
                if tick >= args.warmup:
                    plain_ms.append((time.perf_counter() - started) * 1000)
        else:
            chosen = np.flatnonzero(present[:: args.metrics])
            beats = [CheckedHeartbeat(ids[i], now, metrics=dict(zip(names, sample[i].tolist()))) for i in chosen]
            orch.registry.accept_all(beats, now, trusted=True)
            ctx = TickContext(tick=tick + 1, now=now, config=orch.config, registry=orch.registry, mesh=orch.mesh,
                              store=None, orchestrator=orch, report=TickReport(tick=tick + 1, started_at=now))
            started = time.perf_counter()
            answers = predict_plugin.wyneos_predict(ctx, [])
            elapsed = time.perf_counter() - started
            assert answers is not None and answers.latest(ids[chosen[0]], names[0]) is not None
        started = time.perf_counter()
        baseline(flat, mean, var)
        base = time.perf_counter() - started
        if tick >= args.warmup:
            step_ms.append(elapsed * 1000)
            base_ms.append(base * 1000)
    step, base = statistics.median(step_ms), statistics.median(base_ms)
    what = "Columns.step" if args.step_only else "wyneos_predict"
    print(f"{args.nodes} nodes x {args.metrics} metrics = {series} series, {BYTES_PER_SERIES} bytes each "
          f"({series * BYTES_PER_SERIES / 1e6:.0f} MB), share {args.share:g}, daily {args.daily} metric(s)")
    print(f"{what:<16} median {step:8.1f} ms per tick, fastest {min(step_ms):6.1f}  "
          f"(runs: {', '.join(f'{x:.0f}' for x in step_ms)})")
    print(f"{'baseline EWMA':<16} median {base:8.1f} ms per tick, fastest {min(base_ms):6.1f}")
    if plain_ms:
        print(f"{'step, no daily':<16} median {statistics.median(plain_ms):8.1f} ms per tick (runs: "
              f"{', '.join(f'{x:.0f}' for x in plain_ms)}); seasonal / not: first (a sixth close an hour) "
              f"{step_ms[0] / plain_ms[0]:.2f}x, others {statistics.median(step_ms[1:] or step_ms) / statistics.median(plain_ms[1:] or plain_ms):.2f}x")
    print(f"ratio {step / base:.1f}x (fastest runs {min(step_ms) / min(base_ms):.1f}x); "
          f"target under 150 ms: {'met' if step < 150 else 'NOT met'} (median)")
    if args.json:
        args.json.write_text(json.dumps({"nodes": args.nodes, "metrics": args.metrics, "share": args.share,
                                         "daily": args.daily, "step_ms": step_ms, "baseline_ms": base_ms, "what": what}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
