"""Why one node is as it is: every rule's verdict with its trace, the node's trust, and
the actions on it with their cause and what clears them.

One function for ``wyneos explain`` (an orchestrator run from a config) and for
``GET /v1/nodes/{id}/explain`` (the running server's orchestrator and its last report).
"""

from __future__ import annotations

from typing import Any

__all__ = ["explain_node"]


def explain_node(orchestrator: Any, node: Any, report: Any, events: list[dict[str, Any]],
                 committed: list[dict[str, Any]] | None = None,
                 tick_times: dict[int, float] | None = None) -> dict[str, Any]:
    """The explanation of ``node`` after ``report`` as one JSON-serialisable object.

    :param events: lifecycle events of the ticks run (held actions come from them).
    :param committed: the state file's actions in force on the node (its rows).
    :param tick_times: when the ticks of ``committed`` started.
    """
    from wyneos_core.builtin import trust as trust_plugin
    from wyneos_core.builtin.rulesets import _violated, env_of, runner_of
    from wyneos_core.causes import explain_actions
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
