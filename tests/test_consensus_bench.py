"""bench/bench_consensus.py runs at a tiny size, so it cannot silently break."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_consensus.py"


def test_bench_consensus_runs_small_and_reports_its_measures(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_consensus", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "result.json"
    rc = bench.main(["--nodes", "2000", "--ticks", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    # the exit status reports the speed target; which way it goes depends on the machine
    assert rc == (0 if result["under_0_2s"] else 1)
    assert result["nodes"] == 2000 and result["crashed"] == result["cut_off"] == 20 and result["liars"] == 40
    # what the bookkeeping decided is exact: every crash confirmed, no cut-off node, every liar discounted
    assert result["approved_crashed"] == 20 and result["approved_cut_off"] == 0
    assert result["isolations_approved"] == 20 and result["discounted_liars"] == 40
    assert result["observations_per_tick"] > 5 * (2000 - 40)
    # measured times are reported, never asserted: a fast machine rounds them to 0
    for measure in (result["consensus_s"]["median"], result["consensus_cpu_s"]["median"], result["tally_s"]):
        assert isinstance(measure, (int, float)) and measure >= 0
    assert "tally baseline" in capsys.readouterr().out
