"""Running a scenario: the real ``Orchestrator`` against a ``SimCluster`` on a fake clock."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wyneos_core.mesh import build_topology
from wyneos_core.simulate.cluster import SimCluster, fault_targets
from wyneos_core.simulate.licences import CUSTOMER, write_licences
from wyneos_core.wording import plural
from wyneos_core.simulate.metrics import Recorder, TickSample, check_expectations
from wyneos_core.simulate.predict_faults import (
    KINDS,
    SimTelemetry,
    check_predict_expectations,
    declare_telemetry,
    predict_text,
)
from wyneos_core.simulate.scenario import Scenario, node_ids, zone_of
from wyneos_core.simulate.trust_faults import SimWitnesses, check_trust_expectations, trust_text
from wyneos_core.store import StateStore
from wyneos_core.tick import Orchestrator

__all__ = ["SimClock", "SimResult", "compare_consensus", "simulate", "summary_text", "write_outputs"]

#: the simulated epoch: 2026-01-01T00:00:00Z
EPOCH = 1_767_225_600.0


class SimClock:
    """A clock that only moves when the simulator says so."""

    __slots__ = ("now",)

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(slots=True)
class SimResult:
    scenario: Scenario
    summary: dict[str, Any]
    samples: list[TickSample]
    failures: list[str]
    orchestrator: Orchestrator
    cluster: SimCluster


def build(scenario: Scenario, *, state_path: str | Path | None = None,
          workdir: str | Path | None = None, plugins: bool = False) -> tuple[Orchestrator, SimCluster, SimClock]:
    """The orchestrator, the simulated cluster plugin and the clock of ``scenario``.

    :param workdir: a new directory for the run's signed licences and issuer key
        (default: a temporary one, removed by ``simulate`` at the end).
    :param plugins: also load the installed plugins (``wyneos simulate`` does, unless
        ``--no-plugins``), as ``wyneos run`` would.
    """
    config = scenario.orchestrator_config()
    config["plugins"]["trace"] = False
    heartbeat = config["heartbeat"]
    heartbeat["max_nodes"] = max(int(heartbeat["max_nodes"]), scenario.nodes)  # the whole cluster fits
    heartbeat["max_queue"] = max(int(heartbeat["max_queue"]), scenario.nodes)  # and its heartbeats of a tick
    clock = SimClock()
    store: StateStore | bool = False
    if state_path is not None:
        store = StateStore.open(state_path)
    ids = node_ids(scenario.nodes)
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="wyneos-sim-"))
    interval = float(config["tick"]["interval"])
    licences = write_licences(root / "run" if workdir is None else root, ids, scenario.faults,
                              fault_targets(scenario, ids), scenario.seed, EPOCH, interval)
    config["licence"].update({"sources": ["file"], "directory": str(licences.directory),
                              "trusted_keys": [str(licences.issuer_key)], "customer": CUSTOMER,
                              "map": {}, "revocations": None, "ledger": None})
    telemetry = any(f.kind in KINDS for f in scenario.faults)
    if telemetry:
        declare_telemetry(config)
    orchestrator = Orchestrator(config, clock=clock, load_entrypoints=plugins, store=store)
    orchestrator._sim_workdir = root if workdir is None else None  # type: ignore[attr-defined]
    registry = orchestrator.registry
    new = [(index, node_id) for index, node_id in enumerate(ids) if node_id not in registry]
    registry.register_many([node_id for _, node_id in new], now=clock.now,
                           licence_refs=[licences.initial(node_id, index) for index, node_id in new])
    if scenario.zones > 1:
        for index, node_id in new:
            registry[node_id].metadata = {"zone": zone_of(index, len(ids), scenario.zones)}
    orchestrator.mesh = build_topology(ids, config["mesh"])
    cluster = SimCluster(scenario, ids, orchestrator.mesh)
    cluster.witnesses = bool(config["consensus"]["enabled"])
    if cluster.witnesses:
        cluster.attach(orchestrator.registry)
    cluster.consensus_settings = dict(config["consensus"])
    cluster.licences = licences
    orchestrator.pm.register(cluster, SimCluster.__wyneos_name__)
    witnesses = SimWitnesses(scenario, cluster, int(config["heartbeat"].get("max_observations", 32)))
    orchestrator.pm.register(witnesses, SimWitnesses.__wyneos_name__)
    if telemetry:
        cluster.telemetry = SimTelemetry(scenario, ids, cluster.targets, interval)
        orchestrator.pm.register(cluster.telemetry, SimTelemetry.__wyneos_name__)
    return orchestrator, cluster, clock


def simulate(scenario: Scenario, *, progress: bool = False, state_path: str | Path | None = None,
             plugins: bool = False) -> SimResult:
    """Run ``scenario`` tick by tick and measure it.

    :param progress: show a progress bar (tqdm, on stderr).
    :param state_path: keep the orchestrator's SQLite state there (default: none).
    :param plugins: load the installed plugins too (default: the builtin ones only).
    """
    orchestrator, cluster, clock = build(scenario, state_path=state_path, plugins=plugins)
    config = orchestrator.config
    interval = float(config["tick"]["interval"])
    grace = math.ceil(config["heartbeat"]["offline_after"] / interval) + 1
    recorder = Recorder(scenario, cluster, interval, config["healing"]["overload_threshold"],
                        config["heartbeat"]["max_clock_skew"], grace, orchestrator.registry)
    steps = range(1, scenario.ticks + 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=scenario.ticks, unit="tick", desc=scenario.name, leave=False)
    started = time.perf_counter()
    with orchestrator:
        for tick in steps:
            clock.now = EPOCH + tick * interval
            report = orchestrator.tick()
            recorder.record(report)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    workdir = getattr(orchestrator, "_sim_workdir", None)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = recorder.summary(time.perf_counter() - started)
    failures = check_expectations(summary, scenario.expect)
    witnesses = orchestrator.pm.get_plugin(SimWitnesses.__wyneos_name__)
    if witnesses is not None and "trust" in orchestrator.pm.origins:
        summary["trust"] = witnesses.summary()
        failures += check_trust_expectations(summary["trust"], scenario.expect)
    if cluster.telemetry is not None:
        summary["prediction"] = cluster.telemetry.summary()
        failures += check_predict_expectations(summary["prediction"], scenario.expect)
    summary["installed_plugins"] = orchestrator.pm.installed_plugins()  # they change what is measured
    summary["expectations"] = {"checked": sorted(scenario.expect), "failed": failures}
    return SimResult(scenario, summary, recorder.samples, failures, orchestrator, cluster)


def with_consensus(scenario: Scenario, enabled: bool) -> Scenario:
    """A copy of ``scenario`` with ``consensus.enabled`` set."""
    config = dict(scenario.config)
    config["consensus"] = {**config.get("consensus", {}), "enabled": enabled}
    return dataclasses.replace(scenario, config=config)


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "false_isolations": summary["false_isolations"],
        "partition_isolations": summary["partition_isolations"],
        "isolations": summary["isolations"],
        "safety_stop_ticks": summary["safety_stop_ticks"],
        "faults": [{k: f[k] for k in ("fault", "kind", "nodes", "tracked", "detected", "detection_ticks", "acts",
                                      "acted", "action_ticks")} for f in summary["faults"]],
    }


def compare_consensus(result: SimResult, *, progress: bool = False, state_path: str | Path | None = None,
                      plugins: bool = False) -> dict[str, Any]:
    """Run ``result``'s scenario again with consensus the other way round; both side by side.

    :param plugins: load the installed plugins in the second run too (give what the first
        run was given, so the two differ only in consensus).

    :return: ``{"with_consensus": ..., "without_consensus": ...}`` (false isolations,
        isolations, and per fault its detection and action latency).
    """
    enabled = bool(result.orchestrator.config["consensus"]["enabled"])
    other = simulate(with_consensus(result.scenario, not enabled), progress=progress, state_path=state_path,
                     plugins=plugins)
    mine, theirs = _brief(result.summary), _brief(other.summary)
    return {"with_consensus": mine if enabled else theirs, "without_consensus": theirs if enabled else mine}


def comparison_text(comparison: dict[str, Any]) -> str:
    """The side-by-side table of ``compare_consensus``."""
    on, off = comparison["with_consensus"], comparison["without_consensus"]
    row = "  {:<34}{:>16}{:>16}"
    lines = ["consensus compared:" + " " * 17 + "with consensus         without",
             row.format("false isolations", on["false_isolations"], off["false_isolations"]),
             row.format("partition isolations", on["partition_isolations"], off["partition_isolations"]),
             row.format("isolations decided", on["isolations"], off["isolations"])]

    def latency(f: dict[str, Any], key: str, count: str) -> str:
        stats = f[key]
        done = f"{f[count]}/{f['tracked']}"
        return f"{done}, -" if not stats else f"{done}, {stats['mean']:g}/{stats['max']:g}"

    for a, b in zip(on["faults"], off["faults"]):
        lines.append(f"  {a['fault']}")
        lines.append(row.format("  detected (n, mean/max ticks)", latency(a, "detection_ticks", "detected"),
                                latency(b, "detection_ticks", "detected")))
        if a["acts"]:
            lines.append(row.format("  acted (n, mean/max ticks)", latency(a, "action_ticks", "acted"),
                                    latency(b, "action_ticks", "acted")))
    return "\n".join(lines)


def summary_text(summary: dict[str, Any]) -> str:
    """The human-readable summary printed by ``wyneos simulate``."""
    s = summary
    lines = [
        f"scenario {s['scenario']}: {plural(s['nodes'], 'node')}, {plural(s['ticks'], 'tick')} of "
        f"{s['interval_s']:g}s, seed {s['seed']}",
    ]
    if s["description"]:
        lines.append(f"  {s['description'].strip()}")
    if s.get("installed_plugins"):
        lines.append(f"installed plugins taking part: {', '.join(s['installed_plugins'])} (--no-plugins leaves them out)")
    lines.append("faults:")
    for f in s["faults"]:
        det = f["detection_ticks"]
        act = f["action_ticks"]
        span = f"ticks {f['at']}-{f['until'] - 1}" if f["until"] else f"from tick {f['at']}"
        text = f"  {f['fault']:<22} {span:<16} {plural(f['nodes'], 'node')}"
        if not f["detectable"]:
            text += "  (not detectable by design)"
        else:
            text += (f"  detected {f['detected']}/{f['tracked']}"
                     + (f" in {det['mean']:g} ticks / {det['mean'] * s['interval_s']:g}s (max {det['max']})" if det else ""))
            if f.get("acts", True):
                text += (f"; acted {f['acted']}/{f['tracked']}"
                         + (f" in {act['mean']:g} ticks / {act['mean'] * s['interval_s']:g}s (max {act['max']})"
                            if act else ""))
        lines.append(text)
    lines += [
        f"false isolations: {s['false_isolations']}   isolations decided: {s['isolations']} "
        f"(at most {s['max_isolations_per_node']} per node"
        + (f"; {s['partition_isolations']} of nodes a partition silenced" if s["partition_isolations"] else "")
        + ")",
        f"actions: {s['actions_total']} ({s['actions_per_tick']['mean']:g} per tick, max {s['actions_per_tick']['max']})"
        + ("  " + ", ".join(f"{k}={v}" for k, v in sorted(s["actions_by_type"].items())) if s["actions_by_type"] else ""),
        ("propagation coverage: n/a (nothing to deliver)" if s["coverage"] is None else
         f"propagation coverage: {s['coverage']:.1%} ({s['deliveries']['delivered']}/{s['deliveries']['total']} "
         f"deliveries; {s['transport']['lost']} hop(s) lost, {s['transport']['refused']} refused)"),
        f"load moved to neighbours: planned {s['moved_load']:g}, applied {s['transport']['moved_load']:g} "
        "(acknowledged by the overloaded node)",
        f"safety stop: {s['safety_stop_ticks']} tick(s)",
        (f"consensus: k={s['consensus']['witnesses']}, {plural(s['consensus']['held_nodes'], 'node')} held for "
         f"want of witnesses, {plural(s['consensus']['discounted_witnesses'], 'witness', 'witnesses')} discounted"
         if s["consensus"]["enabled"] else "consensus: off (severe actions on the orchestrator's evidence alone)"),
        f"time per tick: mean {s['tick_ms']['mean']:.1f} ms, p95 {s['tick_ms']['p95']:.1f} ms, "
        f"max {s['tick_ms']['max']:.1f} ms (run {s['wall_seconds']:.1f}s)",
    ]
    for note in s["safety_notes"][:1]:
        lines.append(f"  {note}")
    for note in s["no_spare_capacity"][:1]:
        lines.append(f"  {note}")
    if "consensus_comparison" in s:
        lines.append(comparison_text(s["consensus_comparison"]))
    if "trust" in s:
        lines.append(trust_text(s["trust"]))
    if s.get("prediction"):
        text = predict_text(s["prediction"])
        if text:
            lines.append(text)
    failed = s.get("expectations", {}).get("failed", [])
    checked = s.get("expectations", {}).get("checked", [])
    if checked:
        lines.append("expectations: " + ("all met" if not failed else f"{len(failed)} FAILED"))
        lines += [f"  FAILED {f}" for f in failed]
    return "\n".join(lines)


def write_outputs(result: SimResult, out: str | Path, plot_format: str = "png") -> dict[str, Path]:
    """Write summary.json, summary.txt, timeline.csv and the plot into ``out``, removing
    the outputs of an earlier run there first."""
    from wyneos_core.simulate.plot import FORMATS, plot_run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "summary_json": out / "summary.json",
        "summary_txt": out / "summary.txt",
        "timeline": out / "timeline.csv",
        "plot": out / f"plot.{plot_format}",
    }
    # what an earlier run wrote goes first (a plot of the other format included), so the
    # directory never mixes runs; files of other names are not ours and stay
    for name in ("summary.json", "summary.txt", "timeline.csv", *(f"plot.{fmt}" for fmt in FORMATS)):
        (out / name).unlink(missing_ok=True)
    paths["summary_json"].write_text(json.dumps(result.summary, indent=1, sort_keys=False) + "\n")
    paths["summary_txt"].write_text(summary_text(result.summary) + "\n")
    with paths["timeline"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tick", "time", "online", "stale", "offline", "unknown", "isolated", "partitioned",
                         "actions", "delivered", "deliveries", "safety_stop", "rejected", "moved_load", "duration_ms",
                         "load_mean", "load_max", "overloaded"])
        for s in result.samples:
            c = s.counts
            writer.writerow([s.tick, s.time, c.get("online", 0), c.get("stale", 0), c.get("offline", 0),
                             c.get("unknown", 0), c.get("isolated", 0), s.partitioned, sum(s.actions.values()),
                             s.delivered, s.deliveries, int(s.safety_stop), s.rejected, round(s.moved_load, 4),
                             round(s.duration_ms, 3), "" if s.load_mean is None else round(s.load_mean, 4),
                             "" if s.load_max is None else round(s.load_max, 4), s.overloaded])
    plot_run(result.samples, result.scenario, paths["plot"], result.summary,
             result.orchestrator.config["healing"]["overload_threshold"])
    return paths
