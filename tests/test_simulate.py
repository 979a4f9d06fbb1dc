"""The fault-injection simulator: shipped scenarios, reproducibility, errors, CLI, packaging."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from wyneos_core.simulate import builtin_scenarios, load_scenario, resolve_scenario, simulate
from wyneos_core.simulate.runner import EPOCH, build, summary_text, write_outputs
from wyneos_core.yamlio import LocatedError

ROOT = Path(__file__).resolve().parents[1]


def run(name: str, **overrides):
    scenario = load_scenario(resolve_scenario(f"builtin:{name}")).with_overrides(**overrides)
    return simulate(scenario)


def test_single_crash_is_detected_and_isolated_within_the_grace_period():
    result = run("single-crash")
    config = result.orchestrator.config
    interval, grace = config["tick"]["interval"], config["heartbeat"]["offline_after"]
    [fault] = result.summary["faults"]
    assert fault["detected"] == fault["acted"] == 1
    # stale once stale_after has passed, isolated in the first tick past the grace period
    assert fault["detection_seconds"]["max"] <= config["heartbeat"]["stale_after"] + interval
    assert grace <= fault["action_seconds"]["max"] <= grace + interval
    crashed = result.cluster.targets[0][0]
    assert result.orchestrator.registry[crashed].isolated and result.orchestrator.mesh.is_isolated(crashed)
    assert result.summary["false_isolations"] == 0 and result.summary["isolations"] == 1
    assert result.failures == []


def test_partition_of_half_the_cluster_triggers_the_safety_stop_not_mass_isolation():
    result = run("half-partition")
    s = result.summary
    [fault] = s["faults"]
    # the orchestrator's mesh is never edited: it learns of the partition from the silence
    assert result.orchestrator.mesh.partitions() == [] and not any(x.partitioned for x in result.samples)
    assert fault["nodes"] == 100 and fault["detected"] == 100 and fault["detection_ticks"]["max"] == 3
    assert s["isolations"] == 0 and s["false_isolations"] == s["partition_isolations"] == 0
    stopped = [x.tick for x in result.samples if x.safety_stop]
    # from the tick the silent half turns stale (3 ticks in), before any of it is offline,
    # until the tick the partition heals and the heartbeats arrive again
    assert stopped == list(range(8, 25))
    assert any("went silent within 3 tick(s) of each other" in n for n in s["safety_notes"])
    # the cut-off half did go offline (so isolation would otherwise have hit it)
    assert max(x.counts["offline"] for x in result.samples) == 100
    # healed: everyone back online, nothing isolated
    last = result.samples[-1]
    assert last.counts["online"] == 200 and last.counts["isolated"] == 0
    assert result.failures == []


def test_without_the_correlated_failure_stop_the_same_partition_isolates_half_the_cluster():
    scenario = load_scenario(resolve_scenario("builtin:half-partition"))
    scenario.config = {"decide": {"max_correlated_fraction": 1.0}, "consensus": {"enabled": False}}
    result = simulate(scenario)
    s = result.summary
    # 50% unhealthy is under max_unhealthy_fraction (0.55): nothing else stops it
    assert s["safety_stop_ticks"] == 0
    # every one of the silent (healthy) half is isolated, at the rate limit of 10 per tick
    assert s["isolations"] == s["partition_isolations"] == 100 and s["false_isolations"] == 0
    isolated = [x.counts["isolated"] for x in result.samples]
    assert max(isolated) == 100 and isolated[12] == 10
    assert sorted(result.failures) == ["100 isolation(s) of nodes silenced by a partition, at most 0 expected",
                                       "safety stop in 0 tick(s), expected some"]
    # consensus alone (still without the stop) holds most of them: only nodes on the edge of
    # the cut, whose neighbours on the orchestrator's side really cannot reach them, are confirmed
    scenario.config = {"decide": {"max_correlated_fraction": 1.0}}
    s = simulate(scenario).summary
    assert 0 < s["partition_isolations"] < 50 and s["false_isolations"] == 0
    assert s["consensus"]["held_nodes"] > 50


def test_flapping_node_is_not_isolated_and_reinstated_every_tick():
    result = run("flapping-node")
    s = result.summary
    assert s["max_isolations_per_node"] <= 4 and s["actions_by_type"].get("reinstate", 0) <= 3
    busy = [x.tick for x in result.samples if x.actions.get("isolate") or x.actions.get("reinstate")]
    assert all(b - a > 1 for a, b in zip(busy, busy[1:])), busy
    assert s["false_isolations"] == 0


def test_overload_is_redistributed_to_neighbours_and_returns_when_the_burst_ends():
    result = run("overload")
    cluster = result.cluster
    hot = result.cluster.targets[0]
    s = result.summary
    assert s["moved_load"] > 0 and s["actions_by_type"] == {"reduce_load": 3}
    threshold = result.orchestrator.config["healing"]["overload_threshold"]
    # precondition: the burst overloads every hot node (that it is brought back below the
    # threshold while the burst lasts is the next test's)
    assert all(cluster.base_load[cluster.position(node_id)] + 0.6 > threshold for node_id in hot)
    assert all(x.counts["online"] == 60 for x in result.samples)
    # after the burst the moved load is gone again everywhere
    assert all(abs(v) < 1e-9 for v in cluster.moved.values())
    assert s["faults"][0]["acted"] == 3 and s["false_isolations"] == 0


def test_overload_brings_the_node_below_the_threshold_while_the_burst_lasts():
    scenario = load_scenario(resolve_scenario("builtin:overload")).with_overrides(ticks=12)
    result = simulate(scenario)
    registry = result.orchestrator.registry
    threshold = result.orchestrator.config["healing"]["overload_threshold"]
    for node_id in result.cluster.targets[0]:
        assert registry[node_id].load <= threshold + 1e-9, (node_id, registry[node_id].load)
    receivers = {n for _, moves in result.cluster.moves_from.values() for n, _ in moves}
    assert receivers and all(registry[n].load <= 0.75 + 1e-6 for n in receivers)


def test_licence_faults_carry_their_reason_codes_and_isolate():
    result = run("licence-faults")
    orch = result.orchestrator
    assert "licence" not in orch.config["plugins"]["disable"]  # the real licence step ran
    report = orch.last_report
    bad = {r.node_id: r for r in report.licences.values() if not r.valid}
    assert {r.reason for r in bad.values()} == {"expired", "invalid_signature"}
    assert all(r.source == "file" for r in report.licences.values())
    assert sum(r.reason == "ok" for r in report.licences.values()) == 37  # signed pool licences verify
    # the expiry date is the simulated time of the fault's tick, reached on the fake clock
    expired = [r for r in bad.values() if r.reason == "expired"]
    at = result.scenario.faults[0].at
    assert all(r.expires == EPOCH + at * 5.0 for r in expired)
    assert result.summary["actions_by_type"] == {"isolate": 3, "revoke": 1}
    assert all(f["acted"] == f["nodes"] for f in result.summary["faults"])
    assert result.summary["faults"][0]["detection_ticks"]["max"] == 0


def test_a_licence_signed_by_an_untrusted_key_is_refused_by_the_real_licence_step(tmp_path):
    scenario = load_scenario(text="scenario: forged\nnodes: 30\nticks: 6\nfaults:\n"
                                  "  - {kind: forged_licence, at: 3, until: 5, count: 1, forgery: untrusted_key}\n")
    orch, cluster, clock = build(scenario, workdir=tmp_path / "sim")
    [node] = cluster.targets[0]
    reasons = []
    with orch:
        for tick in range(1, 7):
            clock.now = EPOCH + tick * 5.0
            reasons.append(orch.tick().licences[node].reason)
    # presented from tick 3 to 4, then the node is back on its pool licence
    assert reasons == ["ok", "ok", "unknown_key", "unknown_key", "ok", "ok"]
    assert (tmp_path / "sim" / "licences" / f"forged-0-{node}.licence").is_file()


def test_same_seed_same_run_other_seed_other_run():
    def strip(summary):
        return {k: v for k, v in summary.items() if k not in ("tick_ms", "wall_seconds")}

    a, b = run("chaos", nodes=300, ticks=30), run("chaos", nodes=300, ticks=30)
    assert strip(a.summary) == strip(b.summary)
    assert a.cluster.targets == b.cluster.targets
    c = run("chaos", nodes=300, ticks=30, seed=99)
    assert c.cluster.targets != a.cluster.targets


def test_chaos_scenario_meets_its_expectations():
    result = run("chaos")
    assert result.failures == [], result.failures
    kinds = {f["kind"] for f in result.summary["faults"]}
    assert kinds == {"crash", "hang", "overload", "flapping", "partition", "licence_expiry", "forged_licence",
                     "clock_skew", "message_loss"}
    assert result.summary["transport"]["lost"] > 0  # lossy links were retried ...
    assert result.summary["coverage"] > 0.9  # ... and most deliveries still made it


@pytest.mark.parametrize(("text", "where", "why"), [
    ("scenario: x\nfaults:\n  - {kind: crash, at: 3, count: 1, colour: red}\n", ":3:", "unknown field 'colour'"),
    ("scenario: x\nfaults:\n  - {kind: quake, at: 3, count: 1}\n", ":3:", "'quake' is not one of"),
    ("scenario: x\nfaults:\n  - {kind: crash, at: 3}\n", ":3:", "exactly one of nodes, count or fraction"),
    ("scenario: x\nnodes: 5\nfaults:\n  - {kind: crash, at: 3, nodes: [node-0009]}\n", ":4:", "unknown node"),
    ("scenario: x\nfaults:\n  - {kind: crash, at: 5, until: 4, count: 1}\n", ":3:", "must be after at"),
    ("scenario: x\nconfig:\n  heartbeat: {stale_after: 50, offline_after: 10}\n", ":3:", "must be at least stale_after"),
    ("scenario: x\nconfig:\n  decide: {max_isolations_per_tick: -1}\n", ":3:", "config.decide.max_isolations_per_tick"),
    ("scenario: x\nticks: 10\nfaults:\n  - {kind: crash, at: 11, count: 1}\n", ":4:", "after the last tick"),
])
def test_bad_scenarios_are_refused_with_file_line_and_field(text, where, why):
    with pytest.raises(LocatedError) as info:
        load_scenario(text=text, name="bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml" + where) and why in message, message


def test_overrides_are_checked_against_the_scenario():
    scenario = load_scenario(text="scenario: x\nnodes: 20\nfaults:\n  - {kind: crash, at: 2, count: 15}\n")
    with pytest.raises(LocatedError, match="15 nodes asked for, the cluster has 10"):
        scenario.with_overrides(nodes=10)
    with pytest.raises(LocatedError, match="between 1 and 1000000"):
        scenario.with_overrides(nodes=1_000_001)
    with pytest.raises(LocatedError, match="between 1 and 100000"):
        scenario.with_overrides(ticks=100_001)


def test_outputs_summary_timeline_and_plot(tmp_path):
    result = run("single-crash", ticks=15)
    for fmt, magic in (("png", b"\x89PNG"), ("svg", b"<?xml")):
        paths = write_outputs(result, tmp_path / fmt, fmt)
        assert paths["plot"].read_bytes().startswith(magic)
        summary = json.loads(paths["summary_json"].read_text())
        assert summary["scenario"] == "single-crash" and summary["ticks"] == 15
        rows = paths["timeline"].read_text().splitlines()
        assert rows[0].startswith("tick,time,online") and len(rows) == 16


def wyneos(*args, cwd):
    return subprocess.run([sys.executable, "-m", "wyneos_core.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_cli_runs_a_shipped_scenario_and_writes_summary_and_plot(tmp_path):
    out = wyneos("simulate", "builtin:single-crash", "--nodes", "80", "--seed", "4", "--out", "run",
                 "--format", "svg", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "scenario single-crash: 80 nodes" in out.stdout and "expectations: all met" in out.stdout
    assert "false isolations: 0" in out.stdout and "time per tick" in out.stdout
    assert (tmp_path / "run" / "plot.svg").is_file() and (tmp_path / "run" / "summary.json").is_file()


def test_cli_exit_codes_for_unmet_expectations_and_bad_input(tmp_path):
    (tmp_path / "strict.yaml").write_text(
        "scenario: strict\nnodes: 20\nticks: 12\nfaults:\n  - {kind: crash, at: 2, count: 1}\n"
        "expect: {acted_within_ticks: 2}\n")
    out = wyneos("simulate", "strict.yaml", "--out", "o", cwd=tmp_path)
    assert out.returncode == 1 and "FAILED #0 crash@2" in out.stdout
    out = wyneos("simulate", "builtin:no-such-thing", cwd=tmp_path)
    assert out.returncode == 2 and "no shipped scenario 'no-such-thing'" in out.stderr
    (tmp_path / "bad.yaml").write_text("scenario: bad\nfaults: [{kind: crash, at: 0, count: 1}]\n")
    out = wyneos("simulate", "bad.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "bad.yaml:2" in out.stderr
    out = wyneos("simulate", "--list", cwd=tmp_path)
    assert out.returncode == 0 and "builtin:half-partition" in out.stdout


def test_unmet_expectations_say_what_happened_without_none_and_with_plurals():
    text = "scenario: late\nnodes: 20\nticks: 4\nfaults:\n  - {kind: crash, at: 3, count: 1}\n" \
           "expect: {detected_within_ticks: 1, acted_within_ticks: 5}\n"
    result = simulate(load_scenario(text=text))
    assert result.failures == [
        "#0 crash@3: detected on 0/1 node(s), expected on all within 1 tick",
        "#0 crash@3: acted on 0/1 node(s), expected on all within 5 ticks",
    ]
    summary = summary_text(result.summary)
    assert "None" not in summary and "scenario late: 20 nodes, 4 ticks of 5s" in summary
    assert "  #0 crash@3             from tick 3      1 node  detected 0/1; acted 0/1" in summary


def test_shipped_scenarios_are_the_repository_files_and_go_into_the_wheel(tmp_path):
    shipped = builtin_scenarios()
    repo = sorted(p.stem for p in (ROOT / "scenarios").glob("*.yaml"))
    assert sorted(shipped) == repo
    assert all(p.resolve().parent == ROOT / "scenarios" for p in shipped.values())  # the source of truth
    for path in shipped.values():
        load_scenario(path)  # every shipped scenario is valid
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("wyneos_core-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for stem in repo:
        assert f"wyneos_core/shipped_scenarios/{stem}.yaml" in names, stem
    for rules in (ROOT / "scenarios" / "rules").glob("*.yaml"):  # the rulesets scenarios name
        assert f"wyneos_core/shipped_scenarios/rules/{rules.name}" in names, rules.name
    assert "wyneos_core/simulate/scenario.schema.json" in names


@pytest.mark.parametrize(("option", "value", "most"), [("--nodes", "0", 1_000_000), ("--ticks", "0", 100_000),
                                                       ("--ticks", "-3", 100_000), ("--nodes", "1000001", 1_000_000),
                                                       ("--ticks", "100001", 100_000)])
def test_cli_refuses_out_of_range_overrides_naming_the_option(tmp_path, option, value, most):
    out = wyneos("simulate", "builtin:single-crash", option, value, "--out", "o", cwd=tmp_path)
    assert out.returncode == 2
    assert f"argument {option}" in out.stderr and f"must be between 1 and {most}" in out.stderr
    assert not (tmp_path / "o").exists()


def test_overrides_of_zero_are_refused_not_ignored():
    scenario = load_scenario(text="scenario: x\nnodes: 20\n", name="x.yaml")
    for kwargs, option in (({"nodes": 0}, "--nodes"), ({"ticks": 0}, "--ticks"), ({"ticks": -3}, "--ticks")):
        with pytest.raises(LocatedError) as info:
            scenario.with_overrides(**kwargs)
        assert str(info.value).startswith(option) and "x.yaml" not in str(info.value)


def test_non_finite_fault_params_are_refused():
    with pytest.raises(LocatedError, match=r"bad.yaml:4:.*faults\[0\].skew: must be a finite number"):
        load_scenario(text="scenario: x\nnodes: 10\nfaults:\n  - {kind: clock_skew, at: 1, count: 1, skew: .inf}\n",
                      name="bad.yaml")


def test_cli_list_into_a_closed_pipe_ends_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "wyneos_core.cli", "simulate", "--list"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
