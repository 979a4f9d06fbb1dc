"""Simulated telemetry and declared state: the faults ``leak``, ``disk_fill``,
``cron_burst`` and ``drift``, and what the summary measures of them.

``SimTelemetry`` gives every simulated node the metrics the agent would report
(``cpu``, ``memory``, ``disk_used``, each a ratio 0..1: a per-node base level and a little
seeded noise) and the metadata drift compares (``labels``, ``version``,
``config_digest``, ``packages``). ``SimCluster`` puts both into each heartbeat, so they
reach the detectors and the drift step through the real intake, as an agent's do
(``Heartbeat.metrics``, ``telemetry.metrics`` in the config).

* ``leak`` / ``disk_fill``: from ``at`` the metric (``memory`` / ``disk_used``, or the
  fault's ``metric``) creeps up by ``per_tick`` a tick until it reaches 1.0; the node then
  crashes (sends nothing) until ``until``, or to the end. The failure is that crash.
* ``cron_burst``: from ``at`` the metric (``cpu``) jumps by ``height`` for ``length``
  ticks every ``period`` ticks (default: a day of ticks): a benign nightly job.
* ``drift``: from ``at`` the node reports another ``field`` (``config_digest``) than
  the one declared; ``until`` puts it back.

Measured (``summary()``): for each failure whether a predictive rule warned before it
and how long before (the lead time: median and 10th percentile); warnings of
predictive rules on nodes with no leak or disk fill under way (false warnings, per node
and simulated day); actions decided (not only warned of) because of predictive rules;
for each drifted node the ticks until its drift state was ``unexplained``.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from typing import Any, Final

from wyneos_core import hookimpl
from wyneos_core.model import TickReport
from wyneos_core.simulate.scenario import Scenario
from wyneos_core.tick import TickContext

__all__ = ["KINDS", "METRICS", "SimTelemetry", "check_predict_expectations", "declare_telemetry", "predict_text"]

KINDS: Final = frozenset({"leak", "disk_fill", "cron_burst", "drift"})
#: the metrics every simulated node reports, as ``telemetry.metrics`` declares them
METRICS: Final = ("cpu", "memory", "disk_used")
#: the metadata every simulated node reports, and the declaration it matches
DECLARED: Final = {"labels": {"role": "sim"}, "version": "1.0.0", "config_digest": "sha256:declared",
                   "packages": ["agent=1.0.0", "openssl=3.0.13"]}
_DEFAULT_METRIC = {"leak": "memory", "disk_fill": "disk_used", "cron_burst": "cpu"}
_CHANGED = {"version": "1.0.1-hotfix", "config_digest": "sha256:edited-by-hand",
            "packages": ["agent=1.0.0"], "labels": {"role": "sim", "patched": "yes"}}


def declare_telemetry(config: Any) -> None:
    """What the simulated nodes report, declared in the orchestrator's config: the metrics
    (``telemetry.metrics``) and, unless the scenario declares its own, the state they
    should run (``drift.declared``)."""
    declared = {m["name"] for m in config["telemetry"]["metrics"]}
    config["telemetry"]["metrics"] = [*config["telemetry"]["metrics"],
                                      *({"name": m, "unit": "ratio", "min": 0.0, "max": 1.0}
                                        for m in METRICS if m not in declared)]
    if not config["drift"]["declared"] and not config["drift"].get("manifests"):
        config["drift"]["declared"] = [{"selector": {"labels": dict(DECLARED["labels"])},
                                        **{k: v for k, v in DECLARED.items() if k != "labels"}}]


class SimTelemetry:
    """The plugin that plays the simulated nodes' telemetry and reported state."""

    __wyneos_name__ = "simulated-telemetry"

    def __init__(self, scenario: Scenario, ids: Sequence[str], targets: dict[int, list[str]], interval: float) -> None:
        self.scenario = scenario
        self.ids = list(ids)
        self.interval = interval
        rng = random.Random(scenario.seed + 7)
        self.base = {i: {"cpu": rng.uniform(0.15, 0.35), "memory": rng.uniform(0.3, 0.5),
                         "disk_used": rng.uniform(0.3, 0.6)} for i in self.ids}
        self.noise = random.Random(scenario.seed + 8)
        self.faults = [f for f in scenario.faults if f.kind in KINDS]
        self.targets = {f.index: targets.get(f.index, []) for f in self.faults}
        self.metadata = {i: DECLARED for i in self.ids}  # one object per state: unchanged ids, unchanged dicts
        self.values: dict[str, dict[str, float]] = {}
        #: node -> tick it failed (its leaking metric reached 1.0); down from then on
        self.failed: dict[str, int] = {}
        self.down: set[str] = set()
        self.leaking: dict[str, int] = {}  # node -> tick its leak or disk fill began
        self.drifted: dict[str, int] = {}  # node -> tick it drifted
        # measured
        self.warned: dict[str, int] = {}  # node -> first warning tick (any predictive rule)
        self.warnings: list[tuple[int, str]] = []  # (tick, node) of each warning episode's start
        self._warning_now: set[str] = set()
        self.false_warnings = 0
        self.predictive_actions = 0
        self.drift_seen: dict[str, int] = {}
        #: episodes in which a predictive rule's condition held (went pending)
        self.pending = 0
        self.held_by_guard = 0
        self.ticks = 0

    # -- the nodes ---------------------------------------------------------------------------

    def begin_tick(self, tick: int) -> None:
        """Move every metric to ``tick``; who failed; what each node reports."""
        self.ticks = tick
        noise = self.noise
        values = {i: {m: b + noise.gauss(0.0, 0.01) for m, b in base.items()} for i, base in self.base.items()}
        down: set[str] = set()
        for fault in self.faults:
            if tick < fault.at:
                continue
            nodes = self.targets[fault.index]
            ended = fault.until is not None and tick >= fault.until
            kind = fault.kind
            metric = fault.params.get("metric") or _DEFAULT_METRIC.get(kind, "")
            if kind in ("leak", "disk_fill"):
                for n in nodes:
                    if ended:
                        continue
                    self.leaking.setdefault(n, fault.at)
                    level = self.base[n][metric] + float(fault.params.get("per_tick", 0.001)) * (tick - fault.at)
                    if level >= 1.0 and n not in self.failed:
                        self.failed[n] = tick
                    if n in self.failed:
                        down.add(n)
                    values[n][metric] = min(1.0, level)
            elif kind == "cron_burst" and not ended:
                period = int(fault.params.get("period") or max(2, round(86400 / self.interval)))
                if (tick - fault.at) % period < int(fault.params.get("length", 2)):
                    for n in nodes:
                        values[n][metric] += float(fault.params.get("height", 0.5))
            elif kind == "drift":
                field = fault.params.get("field", "config_digest")
                for n in nodes:
                    if ended:
                        if self.metadata[n] is not DECLARED:
                            self.metadata[n] = DECLARED
                    elif n not in self.drifted:
                        self.drifted[n] = tick
                        self.metadata[n] = {**DECLARED, field: _CHANGED[field]}
        self.values = {i: {m: round(min(1.0, max(0.0, v)), 5) for m, v in vs.items()} for i, vs in values.items()}
        self.down = down

    def metrics_of(self, node_id: str) -> dict[str, float]:
        return self.values.get(node_id, {})

    def metadata_of(self, node_id: str) -> dict[str, Any]:
        return self.metadata[node_id]

    # -- measuring ---------------------------------------------------------------------------

    @hookimpl
    def wyneos_tick_report(self, ctx: TickContext, report: TickReport) -> None:
        tick = report.tick
        predictive = _predictive_origins(ctx)
        warned_now = {a.target for a in report.proposed if a.origin in predictive}
        for node_id in warned_now - self._warning_now:
            self.warnings.append((tick, node_id))
            self.warned.setdefault(node_id, tick)
            if node_id not in self.leaking or node_id in self.failed:
                self.false_warnings += 1
        self._warning_now = warned_now
        self.predictive_actions += sum(1 for a in report.actions if a.origin in predictive)
        for t in report.transitions:
            if t.get("kind") == "drift" and t["to"] == "unexplained" and t["node_id"] in self.drifted:
                self.drift_seen.setdefault(t["node_id"], tick)
            elif (t.get("kind") == "rule" and t["to"] == "pending"
                  and f"ruleset:{t.get('ruleset')}/{t['rule_id']}" in predictive):
                self.pending += 1
        self.held_by_guard = _guard_holds(ctx)

    def summary(self) -> dict[str, Any]:
        leads = []
        missed = 0
        for node_id, failed_at in sorted(self.failed.items()):
            warned = [t for t, n in self.warnings if n == node_id and self.leaking[node_id] <= t <= failed_at]
            if warned:
                leads.append((failed_at - warned[0]) * self.interval)
            else:
                missed += 1
        days = len(self.ids) * self.ticks * self.interval / 86400.0
        latency = [self.drift_seen[n] - t for n, t in self.drifted.items() if n in self.drift_seen]
        out: dict[str, Any] = {
            "failures": len(self.failed), "warned_before_failure": len(leads), "missed": missed,
            "lead_time_s": _quantiles(leads),
            "warnings": len(self.warnings), "false_warnings": self.false_warnings,
            "node_days": round(days, 3),
            "false_warnings_per_node_day": round(self.false_warnings / days, 4) if days else None,
            "predictive_actions": self.predictive_actions,
            "predictive_pending": self.pending, "held_by_flap_guard": self.held_by_guard,
            "drifted": len(self.drifted), "drift_detected": len(latency),
            "drift_latency_ticks": _quantiles(latency),
            "drift_latency_s": _quantiles([t * self.interval for t in latency]),
        }
        return out


def _predictive_origins(ctx: TickContext) -> set[str]:
    from wyneos_core.builtin.rulesets import runner_of

    runner = runner_of(ctx.orchestrator.pm)
    if runner is None:
        return set()
    return {f"ruleset:{l.ruleset.name}/{r.id}" for l in runner.loaded.values() for r in l.ruleset.rules
            if r.predictive}


def _guard_holds(ctx: TickContext) -> int:
    """Episodes the flap guards of the predictive rules held back, so far."""
    from wyneos_core.builtin.rulesets import runner_of

    runner = runner_of(ctx.orchestrator.pm)
    if runner is None:
        return 0
    return sum(g.suppressed_total for l in runner.loaded.values() for g in l.guards.values())


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p10 = ordered[max(0, int(0.1 * (len(ordered) - 1)))] if len(ordered) < 10 else \
        statistics.quantiles(ordered, n=10, method="inclusive")[0]
    return {"median": round(statistics.median(ordered), 3), "p10": round(p10, 3), "min": round(ordered[0], 3),
            "max": round(ordered[-1], 3), "n": len(ordered)}


def check_predict_expectations(summary: dict[str, Any], expect: dict[str, Any]) -> list[str]:
    """The prediction and drift expectations of a scenario that the run did not meet."""
    failures = []
    share = expect.get("min_warned_before_failure")
    if share is not None:
        got = summary["warned_before_failure"] / summary["failures"] if summary["failures"] else None
        if got is None or got < share:
            failures.append(f"warned before {summary['warned_before_failure']} of {summary['failures']} failures, "
                            f"expected at least {share:.0%}")
    limit = expect.get("min_lead_time_p10_s")
    if limit is not None:
        lead = summary["lead_time_s"]
        if lead is None or lead["p10"] < limit:
            failures.append(f"lead time p10 {lead['p10'] if lead else None} s, expected at least {limit:g} s")
    limit = expect.get("max_false_warnings_per_node_day")
    if limit is not None and (summary["false_warnings_per_node_day"] or 0) > limit:
        failures.append(f"{summary['false_warnings_per_node_day']} false warnings per node-day, expected at most "
                        f"{limit:g}")
    limit = expect.get("max_predictive_actions")
    if limit is not None and summary["predictive_actions"] > limit:
        failures.append(f"{summary['predictive_actions']} actions decided by predictive rules, expected at most "
                        f"{limit}")
    limit = expect.get("max_drift_latency_ticks")
    if limit is not None:
        lat = summary["drift_latency_ticks"]
        if summary["drift_detected"] < summary["drifted"] or lat is None or lat["max"] > limit:
            failures.append(f"drift seen on {summary['drift_detected']} of {summary['drifted']} nodes, worst "
                            f"{lat['max'] if lat else None} tick(s), expected all within {limit}")
    return failures


def predict_text(summary: dict[str, Any]) -> str:
    """The summary's prediction and drift lines for ``wyneos simulate``'s text output."""
    lines = []
    if summary["failures"] or summary["warnings"] or summary["predictive_pending"]:
        lead = summary["lead_time_s"]
        lead_text = f"lead time median {lead['median'] / 60:.1f} min, p10 {lead['p10'] / 60:.1f} min" if lead \
            else "no lead time"
        lines.append(f"prediction: {summary['warned_before_failure']} of {summary['failures']} failures warned of "
                     f"before they happened ({lead_text}); {summary['false_warnings']} false warning(s), "
                     f"{summary['false_warnings_per_node_day']} per node-day; {summary['predictive_actions']} "
                     f"action(s) decided by predictive rules; {summary['predictive_pending']} time(s) a predictive "
                     f"rule's condition held, {summary['held_by_flap_guard']} burst(s) held back by the flap guard")
    if summary["drifted"]:
        lat = summary["drift_latency_ticks"]
        lines.append(f"drift: {summary['drift_detected']} of {summary['drifted']} drifted nodes seen unexplained"
                     + (f", latency median {lat['median']:g} tick(s), max {lat['max']:g}" if lat else ""))
    return "\n".join(lines)
