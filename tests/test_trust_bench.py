"""bench/bench_trust.py runs at a tiny size, so it cannot silently break (counts only)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_trust.py"


def test_bench_trust_runs_small_and_reports_its_counts(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_trust", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "trust.json"
    rc = bench.main(["--nodes", "300", "--edges", "1800", "--ticks", "2", "--warmup", "4", "--json", str(out)])
    assert rc == 0
    row = json.loads(out.read_text())
    assert row["nodes"] == 300 and row["edges"] == 1800
    assert row["scored"] == 300
    assert row["observations_used"] == 1800  # ring neighbours 1-7 apart: no self-edges, none dropped
    assert len(row["iterations"]) == 2 and all(i >= 1 for i in row["iterations"])
    assert sum(row["tiers"].values()) == 300
    assert row["tiers"]["trusted"] > 250  # the few offline each tick are held back
    text = capsys.readouterr().out
    assert "baseline (s)" in text and "ratio" in text
