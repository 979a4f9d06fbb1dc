"""bench/bench_heartbeats.py runs at a tiny size, so it cannot silently break."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_heartbeats.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_heartbeats", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_heartbeats_runs_small_and_counts_applied_heartbeats(tmp_path):
    out = tmp_path / "result.json"
    assert _bench().main(["--nodes", "200", "--rounds", "2", "--batch", "100", "--singles", "50",
                          "--connections", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["handshakes"]["sessions"] == 200
    for mode in ("session_batched", "signed_batched"):
        r = result[mode]
        assert r["heartbeats"] == r["accepted_by_api"] == r["sent"] == 400 and r["rejected_by_registry"] == 0
        assert r["requests"] == 4 and r["statuses"] == {"202": 4}
    for mode in ("session_single", "signed_single"):
        assert result[mode]["heartbeats"] == result[mode]["sent"] == 50
    assert result["memory"]["nodes"] == 200
    # measured times and rates are reported, never asserted (a fast machine rounds them to 0)
    for key in ("session_batched_per_s", "session_single_per_s", "signed_batched_per_s", "signed_single_per_s",
                "ed25519_verify_per_s"):
        assert isinstance(result[key], (int, float)) and result[key] >= 0


def test_bench_heartbeats_names_a_bad_tick_and_its_value(capsys):
    with pytest.raises(SystemExit) as exc:
        _bench().main(["--tick", "0.01"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--tick must be 0.05-3600 seconds, not 0.01" in err


def test_bench_heartbeats_soak_runs_small_and_loses_nothing(tmp_path):
    out = tmp_path / "soak.json"
    assert _bench().main(["--nodes", "100", "--soak", "5", "--interval", "1", "--connections", "2",
                          "--json", str(out)]) == 0
    soak = json.loads(out.read_text())["soak"]
    assert soak["sent"] == soak["answered_202"] == soak["applied"] and soak["lost"] == 0
    assert soak["sent"] >= 100 and soak["status_checks"] >= 1 and soak["stale_or_offline_seen_max"] == 0


def test_bench_heartbeats_relay_soak_runs_small_and_loses_nothing(tmp_path):
    """The relay soak at a few hundred nodes: real ``wyneos relay`` processes between the
    generator and the server, most sessions sealed as tickets (taken up by the server on
    the first heartbeat, in the untimed warm-up), a sample opened by handshakes; counts only."""
    out = tmp_path / "relay-soak.json"
    assert _bench().main(["--nodes", "300", "--soak", "4", "--interval", "1", "--connections", "2", "--relays", "2",
                          "--sessions", "ticket", "--handshake-sample", "50", "--warm-up", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["relays"] == 2 and result["handshakes"]["sessions"] == 50
    assert result["handshakes"]["extrapolated_to"] == 300
    soak = result["soak"]
    assert soak["relays"] == 2 and soak["sent_timed"] >= 300 and soak["warm_up_s"] is not None
    assert soak["warm_up_sent"] >= 300 and soak["sent"] == soak["sent_timed"] + soak["warm_up_sent"]
    assert soak["sent"] == soak["answered_202"] == soak["applied"] and soak["lost"] == 0
    assert soak["status_checks"] >= 1 and soak["stale_or_offline_seen_max"] == 0


@pytest.mark.ha_soak
@pytest.mark.skipif(not os.environ.get("WYNEOS_HA_SOAK"), reason="set WYNEOS_HA_SOAK=1 (see docs/performance.md)")
def test_a_million_nodes_through_relays_for_a_minute(tmp_path):
    """1,000,000 nodes at a 30 s interval for 60 s through two relays: nothing lost,
    no node stale (``WYNEOS_SOAK_NODES`` sets another size)."""
    out = tmp_path / "million.json"
    nodes = int(os.environ.get("WYNEOS_SOAK_NODES", "1000000"))
    assert _bench().main(["--nodes", str(nodes), "--soak", "60", "--interval", "30", "--relays", "2",
                          "--sessions", "ticket", "--warm-up", "--json", str(out)]) == 0
    soak = json.loads(out.read_text())["soak"]
    assert soak["sent_timed"] == 2 * nodes  # 60 s of 30 s rounds, whatever slot the timed part starts at
    assert soak["sent"] == soak["answered_202"] == soak["applied"] and soak["lost"] == 0  # the warm-up's too
    assert soak["status_checks"] >= 1 and soak["stale_or_offline_seen_max"] == 0
