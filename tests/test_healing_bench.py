"""bench/bench_propagate.py runs at a tiny size, so it cannot silently break."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_propagate.py"


def test_bench_propagate_runs_small_and_reports_its_measures(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_propagate", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "result.json"
    assert bench.main(["--nodes", "400", "--actions", "40", "--repeat", "1", "--sample", "5",
                       "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["nodes"] == 400 and result["actions"] == 40
    assert result["deliveries"] >= 40 and 0 < result["delivered"] <= result["deliveries"]
    assert result["propagate_cpu_s"]["median"] > 0 and result["search_per_action_s"] > 0
    assert "CPU" in capsys.readouterr().out
