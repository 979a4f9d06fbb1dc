"""Shadow rulesets: candidates evaluated beside the live ones, in audit, and the difference.

``rulesets.candidates`` load like ``rulesets.paths`` and run every tick on the same nodes
and licence results as the live rulesets, but nothing they propose is decided. The
difference is per rule of each candidate ruleset, against the live ruleset of the same
name (a candidate with a new name is all new): the nodes that would newly fail or pass
a governance rule, and the actions that would be added or removed. The same comparison
serves ``wyneos replay`` (the logged inputs against other rulesets).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from wyneos_core.model import LicenceResult, Node, NodeStatus
from wyneos_core.rules.interp import EvalEnv
from wyneos_core.rules.runtime import RulesetRunner

__all__ = ["Evaluation", "diff", "evaluate", "nodes_from", "licences_from"]

#: nodes named per rule and per kind of difference at most
EXAMPLES = 20

Evaluation = tuple[dict[str, set[str]], set[tuple[str, str, str]]]


def evaluate(runner: RulesetRunner, nodes: Sequence[Node], licences: Mapping[str, LicenceResult], tick: int,
             now: float) -> Evaluation:
    """Failing nodes per ``ruleset/rule`` and proposed ``(rule, type, target)`` of ``runner``."""
    env = RulesetRunner.environment(nodes, now)
    sink: list[Any] = []
    results = runner.governance(nodes, licences, tick=tick, env=env, transitions=[], errors=sink)
    failing: dict[str, set[str]] = {}
    violated: dict[str, set[str]] = {}
    for r in results:
        if not r.passed and r.state in (None, "firing"):
            failing.setdefault(f"{r.source.removeprefix('ruleset:')}/{r.rule_id}", set()).add(r.node_id)
            violated.setdefault(r.rule_id, set()).add(r.node_id)
    for rs in runner.rulesets("governance"):
        for rule in rs.rules:
            failing.setdefault(f"{rs.name}/{rule.id}", set())
    actions: set[tuple[str, str, str]] = set()
    stage_env = EvalEnv(env.now, env.cluster, violated)
    for stage in ("healing", "enforcement"):
        if runner.rulesets(stage):
            for a in runner.actions(stage, nodes, licences, tick=tick, env=stage_env, transitions=[], errors=sink):
                actions.add((a.origin.removeprefix("ruleset:"), a.type, a.target))
    return failing, actions


def diff(live: Evaluation, candidate: Evaluation, names: Iterable[str]) -> dict[str, Any]:
    """Per rule: nodes newly failing / passing, actions added / removed (candidate vs live),
    restricted to the rulesets ``names``."""
    names = set(names)
    live_fail, live_actions = live
    cand_fail, cand_actions = candidate
    rules: dict[str, dict[str, Any]] = {}

    def entry(rule: str) -> dict[str, Any]:
        return rules.setdefault(rule, {"newly_failing": [], "newly_passing": [], "actions_added": [],
                                       "actions_removed": []})

    for rule in sorted(set(cand_fail) | {r for r in live_fail if r.split("/")[0] in names}):
        new = sorted(cand_fail.get(rule, set()) - live_fail.get(rule, set()))
        gone = sorted(live_fail.get(rule, set()) - cand_fail.get(rule, set()))
        if new or gone:
            e = entry(rule)
            e["newly_failing"], e["newly_passing"] = new[:EXAMPLES], gone[:EXAMPLES]
            e["newly_failing_count"], e["newly_passing_count"] = len(new), len(gone)
    live_in = {a for a in live_actions if a[0].split("/")[0] in names}
    for kind, items in (("actions_added", cand_actions - live_in), ("actions_removed", live_in - cand_actions)):
        for rule, type_, target in sorted(items):
            e = entry(rule)
            e[f"{kind}_count"] = e.get(f"{kind}_count", 0) + 1
            if len(e[kind]) < EXAMPLES:
                e[kind].append({"type": type_, "target": target})
    totals = {k: sum(e.get(f"{k}_count", 0) for e in rules.values())
              for k in ("newly_failing", "newly_passing", "actions_added", "actions_removed")}
    return {"rules": rules, "totals": totals}


def nodes_from(rows: Iterable[Mapping[str, Any]]) -> list[Node]:
    """Nodes from their logged ``to_dict`` form."""
    out = []
    for row in rows:
        out.append(Node(str(row["id"]), NodeStatus(row.get("status", "unknown")), last_seen=row.get("last_seen"),
                        load=row.get("load"), metadata=dict(row.get("metadata") or {}),
                        licence_ref=row.get("licence_ref"), fingerprint=row.get("fingerprint"),
                        isolated=bool(row.get("isolated")), trust=row.get("trust"), trust_tier=row.get("trust_tier")))
    return out


def licences_from(rows: Iterable[Mapping[str, Any]]) -> dict[str, LicenceResult]:
    out = {}
    for row in rows:
        out[row["node_id"]] = LicenceResult(
            row["node_id"], bool(row["valid"]), row.get("reason", "ok"), row.get("detail", ""), row.get("licence_id"),
            row.get("customer"), row.get("product"), row.get("tier"), tuple(row.get("features") or ()),
            row.get("expires"), bool(row.get("in_grace")), row.get("source", ""))
    return out
