"""bench/bench_failover.py runs at a tiny size, so it cannot silently break."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ha_helpers import need_etcd

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_failover.py"

pytestmark = pytest.mark.slow


def test_bench_failover_runs_small_and_counts(capsys) -> None:
    need_etcd()
    spec = importlib.util.spec_from_file_location("bench_failover", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--kills", "1", "--ticks", "5", "--decisions", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fo = result["failover"]
    assert fo["kills"] == 1 and len(fo["times_s"]) == 1
    assert fo["budget_s"] == fo["lease_s"] + 2 * fo["tick_s"]
    for backend in ("sqlite", "etcd"):
        run = result["decisions"][backend]
        assert run["ticks"] == 5 and run["decisions"] == 15  # 3 new decisions committed per tick
    # measured times are reported, never asserted
    for measure in (fo["p50_s"], fo["max_s"], result["decisions"]["etcd"]["per_s"]):
        assert isinstance(measure, (int, float))


def test_bench_follower_runs_small_and_reads_the_same_rows_both_ways(capsys) -> None:
    need_etcd()
    path = BENCH.with_name("bench_follower.py")
    spec = importlib.util.spec_from_file_location("bench_follower", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--nodes", "50", "--actions", "5", "--slots", "2", "--changes", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["rows"] == result["rows_watch"] == 50 + 5 + 5  # nodes, actions in force, their acks
    assert result["reloads"] == 1 and result["events"] >= 6  # the copy followed the writes by the watch
    assert isinstance(result["etcd_ms"], float) and isinstance(result["watch_ms"], float)  # reported, not asserted
