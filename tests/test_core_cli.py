"""The ``wyneos`` command line, run as a real process in a scratch directory."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cluster_yaml


def wyneos(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wyneos_core.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_run_governs_the_demo_cluster_tick_by_tick(tmp_path):
    out = wyneos("run", "--ticks", "12", "--interval", "0.6", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "cluster 'demo'" in text and "tick 12:" in text and "stopped after 12 tick(s)" in text
    assert "action   1 reduce_load (warning) by ruleset:healing/reduce-overload (node-03)" in text  # overloaded
    assert "reject   timestamp: 120.0s in the future (allowed skew 10s): 1 node (node-10)" in text  # skewed clock
    assert "reject   node_id: unknown node (heartbeat.unknown_nodes is 'reject'): 1 node (rogue-01)" in text
    assert "status   1 online -> stale (node-07)" in text  # crashed after tick 4
    assert "licence  1 INVALID no_licence (node-11): the node names no licence" in text
    assert ("action   1 isolate (critical) for licence:no_licence by ruleset:licence-enforcement/isolate-unlicensed "
            "(node-11)") in text
    # unchanged failures are counted in one line, not repeated
    assert text.count("licence  1 INVALID no_licence") == 1
    assert "  still    licence failing on 6 nodes (expired=1, expired (in grace)=1, invalid_signature=1, " \
           "machine_mismatch=1, no_licence=1, too_many_nodes=1)" in text
    # the state file is real SQLite with every tick committed
    db = sqlite3.connect(tmp_path / ".wyneos" / "state.db")
    assert db.execute("SELECT COUNT(*) FROM ticks").fetchone()[0] == 12
    assert db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0] == 12
    assert db.execute("SELECT COUNT(*) FROM action_events").fetchone()[0] > 0
    report = json.loads((tmp_path / ".wyneos" / "last-tick.json").read_text())
    assert report["tick"] == 12 and len(report["nodes"]) == 12


def test_run_json_prints_one_report_per_line_and_continues_numbering(tmp_path):
    first = wyneos("run", "--ticks", "2", "--interval", "0.05", "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    reports = [json.loads(line) for line in first.stdout.splitlines()]
    assert [r["tick"] for r in reports] == [1, 2]
    again = wyneos("run", "--ticks", "1", "--json", cwd=tmp_path)
    assert json.loads(again.stdout)["tick"] == 3, "a restart carries on from the state file"


def test_tick_with_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(cluster_yaml(3) + "state: {path: s.db}\n")
    out = wyneos("tick", "--config", str(cfg), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["tick"] == 1 and report["status_counts"]["unknown"] == 3
    assert (tmp_path / "s.db").exists()


def test_bad_config_exits_2_naming_file_line_and_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("nodes:\n  - id: a\n    licnce: x\n")
    out = wyneos("tick", "--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"wyneos: error: {cfg}:3:5: nodes[0].licnce: unknown field 'licnce'; " \
                                 "did you mean 'licence'?"


def test_plugins_lists_builtins_with_versions_and_hooks(tmp_path):
    (tmp_path / "c.yaml").write_text("nodes: [{id: a}]\n")
    out = wyneos("plugins", "--json", "--config", "c.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    assert {"heartbeat", "licence", "governance", "rulesets", "healing", "enforcement", "decide", "propagate",
            "report", "state"} <= set(plugins)
    assert plugins["healing"]["hooks"] == ["wyneos_healing"] and plugins["healing"]["origin"] == "builtin"
    demo = {p["name"]: p["origin"] for p in json.loads(wyneos("plugins", "--json", cwd=tmp_path).stdout)}
    assert demo["rulesets"] == "builtin"  # the demo runs the shipped rulesets instead of:
    assert demo["healing"] == demo["governance"] == demo["enforcement"] == "disabled (builtin)"
    listed = json.loads(wyneos("plugins", "--json", "--disable", "healing", "--config", "c.yaml", cwd=tmp_path).stdout)
    by_name = {p["name"]: p for p in listed}
    assert by_name["healing"]["origin"] == "disabled (builtin)" and by_name["healing"]["hooks"] == []
    assert by_name["governance"]["origin"] == "builtin"
    typo = wyneos("plugins", "--disable", "healnig", "--config", "c.yaml", cwd=tmp_path)
    # disabling a plugin that is not installed warns (one config serves machines with and without it)
    assert typo.returncode == 0 and "wyneos: warning: plugins.disable names 'healnig', which is not installed " \
        "here: nothing to disable; did you mean 'healing'?" in typo.stderr
    only = wyneos("plugins", "--only", "no-such-plugin", "--config", "c.yaml", cwd=tmp_path)
    assert only.returncode == 2 and "plugins.only names 'no-such-plugin'" in only.stderr


def test_trace_switch_prints_hook_calls(tmp_path):
    out = wyneos("tick", "--trace", cwd=tmp_path)
    assert out.returncode == 0
    assert "[trace] -> wyneos_governance [rulesets]" in out.stderr
    assert "[trace] <- wyneos_decide [decide]" in out.stderr


def _ticks_in(db: Path) -> int:
    """Ticks committed to the state file so far (0 while it is still being created)."""
    if not db.exists():
        return 0
    try:
        return sqlite3.connect(db).execute("SELECT COUNT(*) FROM ticks").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def test_sigterm_stops_cleanly_after_the_tick_in_progress(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "wyneos_core.cli", "run", "--interval", "0.2"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        db = tmp_path / ".wyneos" / "state.db"
        while time.monotonic() < deadline and _ticks_in(db) < 2:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # never leave the orchestrator running behind a failed test
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped after" in out
    ticks = sqlite3.connect(db).execute("SELECT MAX(tick) FROM ticks").fetchone()[0]
    assert f"stopped after {ticks} tick(s)" in out


def test_overrunning_ticks_are_counted_as_missed(make_orchestrator, clock):
    from wyneos_core import hookimpl
    from wyneos_core.loop import run

    class Slow:
        @hookimpl
        def wyneos_governance(self):
            time.sleep(0.25)

    orch = make_orchestrator(cluster_yaml(1), plugins=[Slow()])
    done = run(orch, interval=0.1, ticks=3)
    assert done == 3
    assert orch.missed_ticks >= 4  # each 0.25 s tick overruns two or three 0.1 s slots
    # each report carries the count as of its tick: the last one saw the overruns of the two before
    assert 2 <= orch.last_report.missed_ticks <= orch.missed_ticks


@pytest.mark.parametrize("args", [["run", "--ticks", "0"], ["bogus"]])
def test_usage_errors(tmp_path, args):
    out = wyneos(*args, cwd=tmp_path)
    assert out.returncode == 2
