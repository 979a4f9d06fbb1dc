"""bench/bench_drift.py runs at a tiny size, so it cannot silently break (counts only)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_drift.py"


def test_bench_drift_runs_small_and_reports_its_counts(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_drift", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "drift.json"
    assert bench.main(["--nodes", "600", "--ticks", "3", "--changed", "0.05", "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["nodes"] == 600 and row["changed_per_tick"] == 30
    assert sum(row["counts"].values()) == 600
    assert row["counts"]["undeclared"] == 0
    assert 0 < row["counts"]["unexplained"] <= 90  # at most the 90 nodes changed (about half drift)
    assert row["counts"]["in_sync"] >= 600 - 90
    text = capsys.readouterr().out
    assert "baseline (s)" in text and "ratio" in text
