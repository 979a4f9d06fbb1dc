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
    rc = bench.main(["--nodes", "400", "--actions", "40", "--repeat", "1", "--sample", "5",
                     "--json", str(out)])
    result = json.loads(out.read_text())
    # the exit status reports the speed target; which way it goes depends on the machine
    assert rc == (0 if result["under_1s"] else 1)
    assert result["nodes"] == 400 and result["actions"] == 40
    assert result["deliveries"] >= 40 and 0 < result["delivered"] <= result["deliveries"]
    # measured times are reported, never asserted: a fast machine rounds them to 0
    for measure in (result["propagate_s"]["median"], result["propagate_cpu_s"]["median"],
                    result["floor_s"], result["search_per_action_s"]):
        assert isinstance(measure, (int, float)) and measure >= 0
    assert "CPU" in capsys.readouterr().out
