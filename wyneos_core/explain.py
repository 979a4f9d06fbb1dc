"""Why one node is as it is: every rule's verdict with its trace, the node's trust, and
the actions on it with their cause and what clears them.

One function for ``wyneos explain`` (an orchestrator run from a config) and for
``GET /v1/nodes/{id}/explain`` (the running server's orchestrator and its last report).

It reads the state of the builtin decide and rulesets plugins, so it sits above them,
beside the tick; the words of a cause come from ``wyneos_core.causes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wyneos_core.builtin.decide import ISOLATING, state_of
from wyneos_core.builtin.rulesets import runner_of
from wyneos_core.causes import action_cause, clears_text

__all__ = ["explain_actions", "explain_node"]


def explain_node(orchestrator: Any, node: Any, report: Any, events: list[dict[str, Any]],
                 committed: list[dict[str, Any]] | None = None,
                 tick_times: dict[int, float] | None = None) -> dict[str, Any]:
    """The explanation of ``node`` after ``report`` as one JSON-serialisable object.

    :param events: lifecycle events of the ticks run (held actions come from them).
    :param committed: the state file's actions in force on the node (its rows).
    :param tick_times: when the ticks of ``committed`` started.
    """
    from wyneos_core.builtin import trust as trust_plugin
    from wyneos_core.builtin.rulesets import _violated, env_of
    from wyneos_core.builtin.drift import drift_record
    from wyneos_core.rules.interp import NO_LICENCE, evaluate, explain, truthy
    from wyneos_core.rules.runtime import RulesetRunner

    lic = report.licences.get(node.id) or NO_LICENCE
    base = env_of(orchestrator.pm) or RulesetRunner.environment(list(report.nodes), report.started_at)
    out: dict[str, Any] = {
        "node": node.to_dict(), "tick": report.tick, "licence": lic.to_dict(), "rulesets": [], "python_rules": [],
        "trust": trust_plugin.explain(orchestrator, node.id) if "trust" in orchestrator.pm.origins else None}
    out["drift"] = drift_record(orchestrator, node.id)  # docs/drift.md
    runner = runner_of(orchestrator.pm)
    for loaded in (runner.loaded.values() if runner is not None else []):
        rs = loaded.ruleset
        env = base if rs.stage == "governance" else base.staged(_violated(report.results))
        rules = []
        for rule in rs.rules:
            value = truthy(evaluate(rule.condition, node, lic, env))
            tracker = loaded.trackers.get(rule.id)
            if rs.stage == "governance":
                verdict = "passes" if value else "fails"
            else:
                verdict = "applies" if value else "does not apply"
            rules.append({"id": rule.id, "description": rule.description, "condition": rule.source,
                          "value": value, "verdict": verdict,
                          "state": tracker.state_of(node.id) if tracker is not None else "inactive",
                          "for": str(rule.for_), "keep_firing_for": str(rule.keep_firing_for),
                          "trace": explain(rule.condition, node, lic, env),
                          "actions": [a.type for a in rule.actions]})
        out["rulesets"].append({"name": rs.name, "stage": rs.stage, "engine": rs.engine, "file": rs.file,
                                "rules": rules})
    names = {rs["name"] for rs in out["rulesets"]}
    out["python_rules"] = [r.to_dict() for r in report.results if r.node_id == node.id and r.source not in names]
    proposed = {a.id: a.to_dict() for a in report.proposed}
    out["actions"] = explain_actions(orchestrator, node.id, lic, events, proposed, committed, tick_times)
    return out


def explain_actions(orchestrator: Any, node_id: str, licence: Any, events: list[dict[str, Any]],
                    proposed: Mapping[str, Mapping[str, Any]], committed: list[dict[str, Any]] | None = None,
                    tick_times: Mapping[int, float] | None = None) -> list[dict[str, Any]]:
    """Every action on ``node_id`` that is in force after the ticks ``orchestrator`` ran, or
    held back (deferred, suppressed, rejected) in them, or in force in the state file
    (``committed``, the store's rows): for each, its cause, the rule behind it, since when
    (the state file's first tick when it has the action, with the time that tick started),
    and what clears it. ``events`` are the lifecycle events of the ticks run, ``proposed``
    the actions proposed in the last one by id (what a held action was)."""
    settings = orchestrator.config["decide"]
    keep = settings["keep_firing_ticks"]
    rules: dict[str, Any] = {}
    runner = runner_of(orchestrator.pm)
    for loaded in (runner.loaded.values() if runner is not None else []):
        for rule in loaded.ruleset.rules:
            rules[f"{loaded.ruleset.name}/{rule.id}"] = rule
    stored = {a["id"]: a for a in committed or () if a.get("target") == node_id}
    times = tick_times or {}
    from wyneos_core.enforcement.gate import HOLDS, gate_of

    state = state_of(orchestrator)
    held_state = {**state.held, **gate_of(orchestrator).reported}
    out: list[dict[str, Any]] = []

    def one(action: Mapping[str, Any], status: str, run_first: int | None, run_last: int | None,
            pending: Mapping[str, str] | None = None, detail: str = "") -> dict[str, Any]:
        cause = action_cause(action)
        rule = rules.get(cause.rule) if cause.rule else None
        row = stored.get(action["id"])
        since_tick = row["first_tick"] if row is not None else run_first
        entry = {
            "id": action["id"], "type": action["type"], "target": action["target"],
            "severity": action.get("severity"), "origin": action["origin"], "reason": action["reason"],
            "params": action.get("params") or {}, "status": status, "detail": detail, "cause": cause.to_dict(),
            "mode": "enforce",  # a finding in warn or audit says so in its hold (wyneos_core.enforcement.modes)
            "rule_description": rule.description if rule is not None else None,
            "rule_condition": rule.source if rule is not None else None,
            "since_tick": since_tick, "since_source": "state file" if row is not None else "this run",
            "since": times.get(since_tick) if row is not None and since_tick is not None else None,
            "last_proposed_tick": run_last if run_last is not None else (row or {}).get("last_tick"),
            "pending_delivery": dict(pending or {}),
            "clears": clears_text(cause, keep_firing_ticks=keep, rule_condition=rule.source if rule else None,
                                  licence_now=getattr(licence, "reason", None),
                                  isolating=action["type"] in ISOLATING,
                                  probation_ticks=settings.get("probation_ticks")),
        }
        return entry

    for held in sorted(state.in_force.values(), key=lambda h: (h.first_tick, h.action.type)):
        if held.action.target == node_id:
            out.append(one(held.action.to_dict(), "in_force", held.first_tick, held.last_tick, held.pending))
    seen = {e["id"] for e in out}
    last_hold: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("target") == node_id and e.get("state") in ("deferred", "suppressed", "awaiting_witnesses", "rejected", *HOLDS):
            last_hold[e["action_id"]] = e
    for action_id, e in last_hold.items():
        if action_id in seen or action_id not in held_state or action_id not in proposed:
            continue  # released since, or its cause went away
        action = proposed[action_id]
        entry = one(action, e["state"], None, None, detail=e.get("detail", ""))
        entry["clears"] = None  # not in force: nothing to clear; the detail says why it waits
        entry.update({k: e[k] for k in ("mode", "exception", "budget", "by") if k in e})
        out.append(entry)
        seen.add(action_id)
    for action_id, row in stored.items():
        if action_id not in seen:
            entry = one(row, "in_force_in_state_file", None, None)
            entry["detail"] = "not proposed in the ticks of this run"
            out.append(entry)
    return out
