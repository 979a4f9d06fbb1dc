"""Prometheus metrics of a running service (``GET /metrics``, text format 0.0.4).

Each ``Service`` has its own ``CollectorRegistry`` so several can live in one process
(tests). Tick metrics are updated from each finished ``TickReport``; request metrics
as requests are answered.

Conventions (Prometheus' naming guide, checked by ``promtool check metrics`` in the
tests): what only grows is a counter (``_total``); a time is in seconds and says so
(``_seconds``); the series of one gauge never overlap, so ``sum(wyneos_nodes)`` is the
number of nodes (isolation is its own gauge); ``wyneos_build_info`` carries the
version, and the standard ``process_*`` and ``python_*`` series are exported.
``RENAMED`` lists the names older versions used.
"""

from __future__ import annotations

from collections import Counter as _Tally
from typing import Any

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from wyneos_core import __version__
from wyneos_core.causes import action_cause
from wyneos_core.licensing.reasons import REASONS
from wyneos_core.model import NodeStatus, TickReport

__all__ = ["CONTENT_TYPE_LATEST", "RENAMED", "ServiceMetrics"]

#: old metric name (or series) -> what it is now (docs/operations.md, "Renamed metrics")
RENAMED: dict[str, str] = {
    "wyneos_ticks_missed": "wyneos_ticks_missed_total (a counter; it was a gauge)",
    'wyneos_nodes{status="isolated"}': "wyneos_nodes_isolated (wyneos_nodes{status} no longer overlaps)",
}


class ServiceMetrics:
    """The metric families of ``wyneos serve``."""

    def __init__(self) -> None:
        # no ``*_created`` series: they doubled /metrics and no dashboard uses them
        # (a process-wide switch of prometheus_client; set before the metrics exist)
        disable_created_metrics()
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.ticks = Counter("wyneos_ticks", "Ticks run by this server", registry=r)
        self.tick_duration = Histogram(
            "wyneos_tick_duration_seconds", "Wall time of one tick", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.missed = Counter("wyneos_ticks_missed", "Tick slots skipped because a tick overran", registry=r)
        self._missed = 0
        self.last_tick = Gauge("wyneos_last_tick", "Number of the last finished tick", registry=r)
        self.last_tick_time = Gauge("wyneos_last_tick_timestamp_seconds", "When the last tick started", registry=r)
        self.nodes = Gauge("wyneos_nodes", "Nodes by heartbeat status (each node in one status)", ["status"],
                           registry=r)
        self.isolated = Gauge("wyneos_nodes_isolated", "Nodes isolated from the mesh after the last tick",
                              registry=r)
        self.decided = Counter("wyneos_actions_decided", "Actions decided, by type", ["type"], registry=r)
        self.in_force = Gauge("wyneos_actions_in_force", "Actions in force after the last tick, by type",
                              ["type"], registry=r)
        self.plugin_errors = Counter("wyneos_plugin_errors", "Plugin failures recorded in ticks",
                                     ["plugin", "hook", "kind"], registry=r)
        self.heartbeats = Counter("wyneos_heartbeats_received", "Heartbeats received (signed and session), by outcome",
                                  ["outcome"], registry=r)
        self.registry_rejected = Counter("wyneos_heartbeats_rejected_by_registry",
                                         "Queued heartbeats the tick's registry checks refused", registry=r)
        self.applied = Counter("wyneos_heartbeats_applied", "Queued heartbeats the tick applied to the registry",
                               registry=r)
        self.queue = Gauge("wyneos_heartbeat_queue_depth", "Heartbeats waiting for the next tick", registry=r)
        self.enrolled = Gauge("wyneos_enrolled_nodes", "Nodes with an enrolled key (not revoked)", registry=r)
        self.enrolments = Counter("wyneos_enrolments", "Enrolment requests, by outcome", ["outcome"], registry=r)
        self.sessions = Counter("wyneos_session_handshakes", "Heartbeat session handshakes, by outcome", ["outcome"],
                                registry=r)
        self.acks = Counter("wyneos_action_acks", "Action acknowledgements from agents, by status",
                            ["status"], registry=r)
        self.refusals = Counter("wyneos_action_refusals", "Actions agents refused and reported "
                                "(unsigned, bad signature, expired, replayed...), by reason", ["reason"], registry=r)
        self.outbox = Gauge("wyneos_agent_outbox_depth", "Actions waiting for agents to fetch them", registry=r)
        self.licences = Gauge("wyneos_licences", "Licence results of the last tick, by reason code (valid ones: ok; "
                              "valid but in their grace period: in_grace)", ["reason"], registry=r)
        self.rule_failing = Gauge("wyneos_rule_failing_nodes", "Nodes failing each rule in the last tick",
                                  ["rule"], registry=r)
        self.rule_firing = Gauge("wyneos_rule_firing_nodes", "Nodes on which each rule fires in the last tick "
                                 "(failing past its 'for'; a rule without one fires when it fails)", ["rule"],
                                 registry=r)
        self.in_force_by_reason = Gauge(
            "wyneos_actions_in_force_by_reason", "Actions in force after the last tick, by type and reason "
            "(licence:CODE, rule:RULESET/RULE, probation or plugin:NAME)", ["type", "reason"], registry=r)
        self.licence_stop = Gauge("wyneos_licence_safety_stop",
                                  "1 while licence actions are frozen because every licensed node fails for one "
                                  "orchestrator-side reason (the label), else 0", ["reason"], registry=r)
        self.leader_changes = Counter("wyneos_leader_changes", "New leaders seen by this replica (etcd replicas)",
                                      registry=r)
        self.fenced_writes = Counter("wyneos_fenced_writes_refused",
                                     "Ticks whose decisions etcd refused because another leader took over", registry=r)
        self.role = Gauge("wyneos_role", "1 for this server's role: leader (deciding) or follower", ["role"],
                          registry=r)
        self.leader = Gauge("wyneos_leader_info", "The leader this server knows of (1), by id, url and term",
                            ["id", "url", "term"], registry=r)
        for status in NodeStatus:
            self.nodes.labels(status.value)
        Info("wyneos_build", "The running WyneOS: version and Python", registry=r).info(
            {"version": __version__, "python": platform.python_version()})
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=r)  # python_info
        for reason in ("unknown_key", "source_unavailable"):
            self.licence_stop.labels(reason).set(0)
        self._seen: dict[int, set[tuple[str, ...]]] = {}
        self._set_all(self.licences, {(reason,): 0 for reason in [*REASONS, "in_grace"]})
        # trust (docs/trust.md)
        self.trust_tiers = Gauge("wyneos_nodes_by_trust_tier", "Nodes per trust tier after the last tick", ["tier"],
                                 registry=r)
        for tier in ("untrusted", "probation", "trusted", "attested"):
            self.trust_tiers.labels(tier)
        # drift (docs/drift.md)
        self.drift = Gauge("wyneos_nodes_by_drift_state", "Nodes per drift state after the last tick (declared "
                           "state against reported)", ["state"], registry=r)
        self.drift_changes = Counter("wyneos_drift_transitions", "Changes of a node's drift state, by the state "
                                     "it entered", ["state"], registry=r)
        # graduated enforcement (docs/enforcement.md)
        self.findings = Gauge("wyneos_enforcement_findings", "Findings (proposed actions) of the last tick by mode: "
                              "enforce, warn, audit", ["mode"], registry=r)
        self.held = Gauge("wyneos_enforcement_held", "Actions held in the last tick by what held them: "
                          "held_by_budget, excepted, held_by_override", ["kind"], registry=r)
        self.overrides = Gauge("wyneos_enforcement_overrides", "Operator overrides standing", registry=r)
        self.licence_enforced = Gauge("wyneos_licence_enforced", "1 when the licence step enforces (a trusted key "
                                      "is named), 0 when its findings are audited only", registry=r)
        self.shadow = Gauge("wyneos_shadow_differences", "What the candidate rulesets would change in the last tick: "
                            "newly_failing, newly_passing, actions_added, actions_removed", ["kind"], registry=r)
        for mode in ("enforce", "warn", "audit"):
            self.findings.labels(mode)
        for kind in ("held_by_budget", "excepted", "held_by_override"):
            self.held.labels(kind)

    def observe_tick(self, report: TickReport, missed: int, in_force: list[dict[str, Any]],
                     counted: tuple[int, int] = (0, 0)) -> None:
        """The tick's figures; ``counted``: of its heartbeats accepted and rejected, how many
        were counted already, when applied between ticks (``service.applier``)."""
        self.applied.inc(report.heartbeats_accepted - counted[0])  # before last_tick: a reader of both sees it
        if len(report.heartbeats_rejected) > counted[1]:
            self.registry_rejected.inc(len(report.heartbeats_rejected) - counted[1])
        self.ticks.inc()
        self.tick_duration.observe(report.duration_ms / 1000.0)
        if missed > self._missed:
            self.missed.inc(missed - self._missed)
        self._missed = max(self._missed, missed)
        for action in report.actions:
            self.decided.labels(action.type).inc()
        failing = self._state(report, in_force)
        firing: dict[tuple[str, ...], int] = {}
        for result in report.results:
            if result.state in (None, "firing"):
                firing[(result.rule_id,)] = firing.get((result.rule_id,), 0) + 1
        self._set_all(self.rule_firing, {**{k: 0 for k in failing}, **firing})
        self._set_all(self.in_force_by_reason, dict(_Tally((a["type"], action_cause(a).label) for a in in_force)))
        for error in report.errors:
            self.plugin_errors.labels(error.plugin, error.hook, error.kind).inc()
        stop = licence_stop(report)
        for sample in list(self.licence_stop.collect()[0].samples):
            reason = sample.labels["reason"]
            self.licence_stop.labels(reason).set(1 if stop is not None and stop[0] == reason else 0)
        for tier, count in report.trust.get("tiers", {}).items():
            self.trust_tiers.labels(tier).set(count)
        drift = getattr(report, "drift", None) or {}
        for state, count in drift.get("counts", {}).items():
            self.drift.labels(state).set(count)
        for t in report.transitions:
            if t.get("kind") == "drift":
                self.drift_changes.labels(t["to"]).inc()
        section = getattr(report, "enforcement", None) or {}
        for mode, count in section.get("modes", {}).items():
            self.findings.labels(mode).set(count)
        for kind in ("held_by_budget", "excepted", "held_by_override"):
            self.held.labels(kind).set(len(section.get(kind, ())))
        self.overrides.set(len(section.get("overrides", ())))
        self.licence_enforced.set(1 if section.get("licence_enforced", True) else 0)
        for kind, count in ((section.get("shadow") or {}).get("totals") or {}).items():
            self.shadow.labels(kind).set(count)

    def observe_committed(self, report: TickReport, in_force: list[dict[str, Any]]) -> None:
        """The gauges of the committed cluster state, on a replica that does not tick (a
        follower): nodes, licences, trust tiers and actions in force as the leader
        committed them; no counter moves (this server ran no tick)."""
        self._state(report, in_force)
        for tier, count in report.trust.get("tiers", {}).items():
            self.trust_tiers.labels(tier).set(count)

    def _state(self, report: TickReport, in_force: list[dict[str, Any]]) -> dict[tuple[str, ...], int]:
        """The gauges of the cluster state after ``report`` (a tick run here, or the one a
        follower read); returns the failing count per rule."""
        self.last_tick.set(report.tick)
        self.last_tick_time.set(report.started_at)
        counts = report.status_counts()
        self.isolated.set(counts.pop("isolated", 0))
        for status, count in counts.items():
            self.nodes.labels(status).set(count)
        tally = _Tally(a["type"] for a in in_force)
        for sample in list(self.in_force.collect()[0].samples):
            tally.setdefault(sample.labels["type"], 0)
        for type_, count in tally.items():
            self.in_force.labels(type_).set(count)
        self._set_all(self.licences, {(k,): v for k, v in report.licence_counts().items()})
        failing = {(rule,): n.get("failed", 0) for rule, n in report.rule_summary.items()}
        self._set_all(self.rule_failing, failing)
        return failing

    def observe_role(self, role: str, leader: dict[str, Any] | None) -> None:
        """``wyneos_role`` and ``wyneos_leader_info`` (every server, every tick slot)."""
        for name in ("leader", "follower"):
            self.role.labels(name).set(1 if name == role else 0)
        self.leader.clear()
        if leader is not None:
            self.leader.labels(str(leader.get("id")), str(leader.get("url")), str(leader.get("term"))).set(1)

    def _set_all(self, gauge: Gauge, values: dict[tuple[str, ...], int]) -> None:
        """Set ``gauge`` to ``values``; label sets set before that ``values`` lacks go to 0
        (a reason or rule that no longer fails reads 0, not its last count)."""
        seen = self._seen.setdefault(id(gauge), set())
        for labels in seen - set(values):
            gauge.labels(*labels).set(0)
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        seen.update(values)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def licence_stop(report: TickReport | None) -> tuple[str, str] | None:
    """``(reason code, text)`` of the licence safety stop in force in ``report``, or None."""
    if report is None:
        return None
    for error in report.errors:
        if error.kind == "licence_safety_stop":
            code = next((c for c in ("unknown_key", "source_unavailable") if f"failed with {c}" in error.error), "")
            return code, error.error
    return None
