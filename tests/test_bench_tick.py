"""bench/bench_tick.py runs at a small size: every measurement, the JSON it writes, and the
same actions in the tick with and without outputs (the same work each round)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_tick.py"


def test_the_tick_benchmark_runs_at_a_small_size(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH), "--sizes", "400", "--repeat", "2", "--json",
                          str(tmp_path / "ticks.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    [row] = json.loads((tmp_path / "ticks.json").read_text())
    for key in ("tick_s", "tick_outputs_s", "plain_loop_s", "numpy_floor_s", "peak_rss_bytes_per_node"):
        assert row[key] > 0, key
    assert row["nodes"] == 400 and row["actions"] >= 4   # 1% overloaded: reduce_load each round, new again


def test_each_round_redoes_the_same_work_with_and_without_outputs():
    rounds = {}
    for kind in ("tick", "outputs"):
        out = subprocess.run([sys.executable, str(BENCH), "--child", kind, "--sizes", "400", "--repeat", "3"],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        rounds[kind] = json.loads(out.stdout.strip().splitlines()[-1])["actions_per_round"]
    assert rounds["tick"] == rounds["outputs"] == [6, 6, 6]  # 4 reduce_load + 2 isolate, new each round


def test_the_serve_tick_benchmark_runs_at_a_small_size(tmp_path):
    """bench/bench_serve_tick.py: the service decides the same actions as the tick (it
    stops otherwise), and its own plugins were traced."""
    bench = BENCH.parent / "bench_serve_tick.py"
    out = subprocess.run([sys.executable, str(bench), "--sizes", "400", "--repeat", "2", "--json",
                          str(tmp_path / "serve.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    [row] = json.loads((tmp_path / "serve.json").read_text())
    assert row["nodes"] == 400 and row["actions"] >= 4
    for key in ("serve_tick_s", "tick_outputs_s", "ratio", "serve_peak_rss_bytes_per_node"):
        assert row[key] > 0, key
    assert {"agent-outbox"} <= set(row["per_plugin_ms"]), row["per_plugin_ms"]
