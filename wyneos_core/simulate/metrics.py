"""What a simulation measures, tick by tick, and the summary made of it.

* **detection latency** per fault: ticks (and seconds) from the fault's start to the
  first tick the orchestrator noticed it on a node (stale/offline status, refused
  heartbeat, invalid licence, load above the threshold; for a partition: its nodes
  falling silent, stale then offline, which is all an orchestrator sees of one), and to the
  first action decided for it (isolate, reduce_load...);
* **false isolations**: isolations of nodes that had no node fault at the time (or
  within the grace period before) and were heard from; **partition isolations**:
  isolations of healthy nodes that a partition had silenced (to an orchestrator on the
  other side, indistinguishable from crashed nodes unless the safety stop engages);
* for ``orchestrator_link_loss``: detection is the orchestrator noticing the silence,
  "acting" is holding the isolation back (awaiting witnesses, or a safety stop); for
  ``liar``: detection is consensus discounting the node as a witness;
* actions per tick, propagation coverage (delivered share of (action, target) pairs),
  safety stops, isolations per node (flapping), time per tick.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wyneos_core.model import TickReport
from wyneos_core.simulate.cluster import SimCluster
from wyneos_core.simulate.scenario import Fault, Scenario
from wyneos_core.wording import plural

__all__ = ["Recorder", "TickSample", "fleet_column"]

#: node faults tracked per node for latency; bigger faults are sampled (seeded order)
TRACK_LIMIT = 1000
_ACTS = {
    "crash": {"isolate"}, "hang": {"isolate"}, "flapping": {"isolate"},
    "overload": {"reduce_load", "redistribute"},
    "licence_expiry": {"isolate", "quarantine", "degrade"},
    "forged_licence": {"isolate", "quarantine", "revoke"},
    "clock_skew": {"isolate"},
}


#: faults of healthy nodes the orchestrator cannot hear: holding isolation back is the right act
_HOLDS = frozenset({"partition", "orchestrator_link_loss"})
#: faults that call for no action at all (only detection is measured): for leaks, disk
#: fills and drift that is a warning or a drift state (predict_faults measures the rest)
NO_ACTION = frozenset({"liar", "message_loss", "leak", "disk_fill", "cron_burst", "drift"})


@dataclass(slots=True)
class TickSample:
    tick: int
    time: float
    duration_ms: float
    counts: dict[str, int]
    actions: dict[str, int]
    delivered: int
    deliveries: int
    safety_stop: bool
    partitioned: int
    rejected: int
    moved_load: float
    #: mean and highest load reported by the nodes (None: no node reported one)
    load_mean: float | None = None
    load_max: float | None = None
    #: nodes whose load is above the healing threshold
    overloaded: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"tick": self.tick, "time": self.time, "duration_ms": round(self.duration_ms, 3),
                "counts": self.counts, "actions": self.actions, "delivered": self.delivered,
                "deliveries": self.deliveries, "safety_stop": self.safety_stop,
                "partitioned": self.partitioned, "rejected": self.rejected,
                "moved_load": round(self.moved_load, 4),
                "load_mean": None if self.load_mean is None else round(self.load_mean, 4),
                "load_max": None if self.load_max is None else round(self.load_max, 4),
                "overloaded": self.overloaded}


@dataclass(slots=True)
class _Track:
    fault: Fault
    nodes: list[str]
    detected: dict[str, int] = field(default_factory=dict)
    acted: dict[str, int] = field(default_factory=dict)


class Recorder:
    """Collects one ``TickSample`` per tick and the fault latencies; ``summary()`` at the end."""

    def __init__(self, scenario: Scenario, cluster: SimCluster, interval: float, threshold: float,
                 max_skew: float, grace_ticks: int, registry: Any) -> None:
        self.scenario = scenario
        self.cluster = cluster
        #: the orchestrator's registry: the tracked nodes' status and load are read there
        self.registry = registry
        self.interval = interval
        self.threshold = threshold
        self.max_skew = max_skew
        self.grace_ticks = grace_ticks
        self.samples: list[TickSample] = []
        self.tracks: dict[int, _Track] = {}
        self.isolations: Counter[str] = Counter()
        self.false_isolations: list[dict[str, Any]] = []
        self.last_node_fault: dict[str, int] = {}
        #: by position: last tick a partition kept the node from being heard (made by the first partition)
        self.last_silenced: np.ndarray | None = None
        self.partition_isolations: list[dict[str, Any]] = []
        self.safety_notes: list[str] = []
        self.no_capacity: list[str] = []
        #: nodes a severe action waited on witnesses for; witnesses consensus discounted
        self.awaited: set[str] = set()
        self.discounted: set[str] = set()

    def _track(self, fault: Fault) -> _Track:
        track = self.tracks.get(fault.index)
        if track is None:
            nodes = self.cluster.targets.get(fault.index, [])
            track = self.tracks[fault.index] = _Track(fault, list(nodes[:TRACK_LIMIT]))
        return track

    def record(self, report: TickReport) -> TickSample:
        tick = report.tick
        cluster = self.cluster
        scratch = cluster.last_scratch.get("decide", {})
        gate = cluster.last_scratch.get("consensus", {})
        partitioned = scratch.get("partitioned", set())
        for node_id in list(cluster.down) + list(cluster.hung) + list(cluster.expired) + list(cluster.forged):
            self.last_node_fault[node_id] = tick
        for node_id, skew in cluster.skew.items():
            if abs(skew) > self.max_skew:
                self.last_node_fault[node_id] = tick
        if cluster.reachable is not None:
            if self.last_silenced is None:
                self.last_silenced = np.full(len(cluster.ids), -10**9, dtype=np.int64)
            self.last_silenced[~cluster.reachable[:len(cluster.ids)]] = tick

        actions: Counter[str] = Counter()
        acted_on: dict[str, set[str]] = {}
        for a in report.actions:
            actions[a.type] += 1
            acted_on.setdefault(a.target, set()).add(a.type)
            if a.type == "isolate":
                self.isolations[a.target] += 1
                last = self.last_node_fault.get(a.target)
                if last is None or tick - last > self.grace_ticks:
                    p = cluster.position(a.target)
                    silenced = None if p is None or p >= len(cluster.ids) or self.last_silenced is None \
                        else int(self.last_silenced[p])
                    entry = {"tick": tick, "node": a.target, "reason": a.reason}
                    if silenced is not None and tick - silenced <= self.grace_ticks:
                        self.partition_isolations.append(entry)
                    else:
                        self.false_isolations.append(entry)
        if gate:
            self.awaited.update(gate.get("waiting", ()))
            self.discounted.update(gate.get("discounted", ()))
        moved = 0.0
        for e in report.lifecycle:
            if e["state"] in ("suppressed", "awaiting_witnesses"):
                acted_on.setdefault(e["target"], set()).add("held")
            if e["state"] == "in_force" and "effect" in e and isinstance(e["effect"], dict):
                moved += float(e["effect"].get("moved", 0.0) or 0.0)
        for note in report.notes:
            if note.startswith("safety stop:") and len(self.safety_notes) < 5:
                self.safety_notes.append(f"tick {tick}: {note}")
            if note.startswith("no spare capacity") and len(self.no_capacity) < 5:
                self.no_capacity.append(f"tick {tick}: {note}")

        active = [f for f in self.scenario.faults if f.at <= tick]
        if active:
            rejected = {r["node_id"] for r in report.heartbeats_rejected if r.get("field") == "timestamp"}
            for target in gate.get("waiting", ()):
                acted_on.setdefault(target, set()).add("held")
            for fault in active:
                self._observe(self._track(fault), tick, rejected, report, partitioned, acted_on,
                              bool(scratch.get("safety_stop")), gate.get("discounted", set()))

        delivered = sum(1 for d in report.deliveries if d.delivered)
        loads = fleet_column(self.registry, "load")
        loads = loads[~np.isnan(loads)]
        sample = TickSample(tick, report.started_at, report.duration_ms, report.status_counts(), dict(actions),
                            delivered, len(report.deliveries), bool(scratch.get("safety_stop")),
                            len(partitioned), len(report.heartbeats_rejected), moved,
                            float(loads.mean()) if len(loads) else None, float(loads.max()) if len(loads) else None,
                            int(np.count_nonzero(loads > self.threshold)))
        self.samples.append(sample)
        return sample

    def _observe(self, track: _Track, tick: int, rejected: set[str], report: TickReport,
                 partitioned: set[str], acted_on: dict[str, set[str]], safety_stop: bool,
                 discounted: set[str]) -> None:
        kind = track.fault.kind
        wanted = _ACTS.get(kind, set())
        get = self.registry.get
        for node_id in track.nodes:
            if node_id not in track.detected:
                seen = False
                if kind in ("crash", "hang", "flapping", "partition", "orchestrator_link_loss"):
                    node = get(node_id)
                    seen = node is not None and node.status.value in ("stale", "offline")
                elif kind == "overload":
                    node = get(node_id)
                    seen = node is not None and node.load is not None and node.load > self.threshold
                elif kind in ("licence_expiry", "forged_licence"):
                    result = report.licences.get(node_id)
                    seen = result is not None and not result.valid
                elif kind == "clock_skew":
                    seen = node_id in rejected
                elif kind == "liar":
                    seen = node_id in discounted
                elif kind in ("leak", "disk_fill") and self.cluster.telemetry is not None:
                    seen = node_id in self.cluster.telemetry.warned  # a predictive rule warned
                elif kind == "drift" and self.cluster.telemetry is not None:
                    seen = node_id in self.cluster.telemetry.drift_seen
                if seen:
                    track.detected[node_id] = tick
            if node_id not in track.acted and wanted & acted_on.get(node_id, set()):
                track.acted[node_id] = tick
            if kind in _HOLDS and node_id not in track.acted and (
                    safety_stop or "held" in acted_on.get(node_id, set())):
                track.acted[node_id] = tick  # holding isolation back is what a partition calls for
            if (kind == "orchestrator_link_loss" and node_id not in track.acted
                    and "isolate" in acted_on.get(node_id, set())
                    and tick - self.last_node_fault.get(node_id, -10**9) <= self.grace_ticks):
                track.acted[node_id] = tick  # it also crashed (or worse): isolating it is right

    # -- the summary --------------------------------------------------------------------------

    def summary(self, wall_seconds: float) -> dict[str, Any]:
        samples = self.samples
        durations = sorted(s.duration_ms for s in samples)
        per_tick = [sum(s.actions.values()) for s in samples]
        delivered = sum(s.delivered for s in samples)
        total = sum(s.deliveries for s in samples)
        faults = []
        for fault in self.scenario.faults:
            track = self._track(fault)
            detected = [t - fault.at for t in track.detected.values()]
            acted = [t - fault.at for t in track.acted.values()]
            detectable = fault.kind not in ("message_loss", "colluders", "degrading", "cron_burst") and not (
                fault.kind == "clock_skew" and abs(float(fault.params.get("skew", 120))) <= self.max_skew)
            faults.append({
                "fault": fault.label,
                "kind": fault.kind,
                "at": fault.at,
                "until": fault.until,
                "nodes": len(self.cluster.targets.get(fault.index, [])),
                "tracked": len(track.nodes),
                "detectable": detectable,
                "detected": len(track.detected),
                "detection_ticks": _stats(detected),
                "detection_seconds": _stats([d * self.interval for d in detected]),
                "acts": fault.kind not in NO_ACTION,
                "acted": len(track.acted),
                "action_ticks": _stats(acted),
                "action_seconds": _stats([d * self.interval for d in acted]),
                "detected_by_tick": sorted(Counter(track.detected.values()).items()),
                "acted_by_tick": sorted(Counter(track.acted.values()).items()),
            })
        counters = dict(self.cluster.counters)
        counters["moved_load"] = round(counters["moved_load"], 4)
        return {
            "schema": "wyneos.simulation-summary/1",
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "nodes": len(self.cluster.ids),
            "ticks": len(samples),
            "seed": self.scenario.seed,
            "interval_s": self.interval,
            "faults": faults,
            "consensus": self._consensus(),
            "false_isolations": len(self.false_isolations),
            "false_isolation_examples": self.false_isolations[:10],
            "partition_isolations": len(self.partition_isolations),
            "partition_isolation_examples": self.partition_isolations[:10],
            "isolations": sum(self.isolations.values()),
            "max_isolations_per_node": max(self.isolations.values(), default=0),
            "actions_total": sum(per_tick),
            "actions_per_tick": {"mean": round(statistics.fmean(per_tick), 3) if per_tick else 0.0,
                                 "max": max(per_tick, default=0)},
            "actions_by_type": dict(sum((Counter(s.actions) for s in samples), Counter())),
            "coverage": round(delivered / total, 4) if total else None,
            "deliveries": {"delivered": delivered, "total": total},
            "safety_stop_ticks": sum(1 for s in samples if s.safety_stop),
            "safety_notes": self.safety_notes,
            "no_spare_capacity": self.no_capacity,
            "moved_load": round(sum(s.moved_load for s in samples), 4),
            "transport": counters,
            "tick_ms": {"mean": round(statistics.fmean(durations), 3) if durations else 0.0,
                        "p95": round(_pct(durations, 0.95), 3), "max": round(max(durations, default=0.0), 3)},
            "wall_seconds": round(wall_seconds, 3),
        }


    def _consensus(self) -> dict[str, Any]:
        settings = self.cluster.consensus_settings
        return {"enabled": bool(settings.get("enabled", True)), "witnesses": settings.get("witnesses", 2),
                "held_nodes": len(self.awaited), "discounted_witnesses": len(self.discounted)}


def fleet_column(registry: Any, name: str, exclude: Any = ()) -> np.ndarray:
    """Column ``name`` (``load``, ``trust``...) of the registered nodes, but those in ``exclude``."""
    table = registry.table
    slots = table.slots()
    if exclude:
        index = table.index
        gone = np.fromiter((index[i] for i in exclude if i in index), np.int64)
        if len(gone):
            slots = slots[~np.isin(slots, gone)]
    return getattr(table, name)[slots]


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "mean": round(statistics.fmean(values), 3), "max": max(values)}


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _worst(worst: int | None) -> str:
    """``", the slowest after 4 ticks"``, or nothing when none was detected or acted on."""
    return "" if worst is None else f", the slowest after {plural(worst, 'tick')}"


def check_expectations(summary: dict[str, Any], expect: dict[str, Any]) -> list[str]:
    """The expectations of the scenario that the run did not meet (empty: all met)."""
    failures = []
    for fault in summary["faults"]:
        if not fault["detectable"]:
            continue
        limit = expect.get("detected_within_ticks")
        if limit is not None:
            worst = fault["detection_ticks"]["max"] if fault["detection_ticks"] else None
            if fault["detected"] < fault["tracked"] or worst is None or worst > limit:
                failures.append(f"{fault['fault']}: detected on {fault['detected']}/{fault['tracked']} node(s)"
                                f"{_worst(worst)}, expected on all within {plural(limit, 'tick')}")
        limit = expect.get("acted_within_ticks")
        if limit is not None and (fault["kind"] in _ACTS or fault["kind"] == "orchestrator_link_loss"):
            worst = fault["action_ticks"]["max"] if fault["action_ticks"] else None
            if fault["acted"] < fault["tracked"] or worst is None or worst > limit:
                failures.append(f"{fault['fault']}: acted on {fault['acted']}/{fault['tracked']} node(s)"
                                f"{_worst(worst)}, expected on all within {plural(limit, 'tick')}")
    if "max_false_isolations" in expect and summary["false_isolations"] > expect["max_false_isolations"]:
        failures.append(f"{summary['false_isolations']} false isolation(s), at most "
                        f"{expect['max_false_isolations']} expected")
    if "safety_stop" in expect and bool(summary["safety_stop_ticks"]) != expect["safety_stop"]:
        failures.append(f"safety stop in {summary['safety_stop_ticks']} tick(s), expected "
                        + ("some" if expect["safety_stop"] else "none"))
    if "max_partition_isolations" in expect and summary["partition_isolations"] > expect["max_partition_isolations"]:
        failures.append(f"{summary['partition_isolations']} isolation(s) of nodes silenced by a partition, at most "
                        f"{expect['max_partition_isolations']} expected")
    if "max_isolations_per_node" in expect and summary["max_isolations_per_node"] > expect["max_isolations_per_node"]:
        failures.append(f"a node was isolated {summary['max_isolations_per_node']} times, at most "
                        f"{expect['max_isolations_per_node']} expected")
    if "redistributed" in expect and (summary["moved_load"] > 0) != expect["redistributed"]:
        failures.append(f"load moved: {summary['moved_load']}, expected "
                        + ("some" if expect["redistributed"] else "none"))
    if "min_coverage" in expect and summary["coverage"] is not None and summary["coverage"] < expect["min_coverage"]:
        failures.append(f"propagation coverage {summary['coverage']:.2%} below {expect['min_coverage']:.2%}")
    return failures
