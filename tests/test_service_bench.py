"""bench/bench_heartbeats.py runs at a tiny size, so it cannot silently break."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_heartbeats.py"


def test_bench_heartbeats_runs_small_and_counts_applied_heartbeats(capsys):
    spec = importlib.util.spec_from_file_location("bench_heartbeats", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--nodes", "200", "--rounds", "2", "--batch", "100", "--singles", "50",
                       "--connections", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    batched = result["batched"]
    assert batched["heartbeats"] == batched["accepted_by_api"] == 400 and batched["rejected_by_registry"] == 0
    assert batched["requests"] == 4 and result["single"]["heartbeats"] == 50
    # measured times and rates are reported, never asserted (a fast machine rounds them to 0)
    for measure in (batched["seconds"], batched["sending_seconds"], batched["per_s"],
                    result["baseline_verify_per_s_one_core"]):
        assert isinstance(measure, (int, float)) and measure >= 0
