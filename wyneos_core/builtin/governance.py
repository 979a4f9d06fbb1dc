"""Builtin governance: a few Python rules every cluster wants, on by default.

* ``heartbeat-fresh``: the node's last heartbeat is not stale or missing.
* ``load-ceiling``: the node's load is below ``healing.overload_threshold``.

Turn them off with ``plugins.disable: [governance]`` (YAML rulesets then take over).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from wyneos_core import hookimpl
from wyneos_core.model import LicenceResult, Node, NodeStatus, RuleResult, Severity
from wyneos_core.pyrules import Rule, evaluate
from wyneos_core.tick import TickContext


_ONLINE = NodeStatus.ONLINE


def rules(threshold: float) -> tuple[Rule, ...]:
    """The builtin rules, with the overload threshold bound once per tick."""
    return (
        Rule("heartbeat-fresh", "Nodes report a heartbeat within the stale window",
             lambda node, ctx: node.status is _ONLINE, Severity.WARNING, "no fresh heartbeat"),
        Rule("load-threshold", "Nodes stay below the overload threshold",
             lambda node, ctx: node.load is None or node.load < threshold, Severity.WARNING,
             f"load above the overload threshold ({threshold:g})"),
    )


@hookimpl
def wyneos_governance(ctx: TickContext, nodes: Sequence[Node], licences: Mapping[str, LicenceResult]) -> list[RuleResult]:
    return evaluate(rules(ctx.config["healing"]["overload_threshold"]), nodes, ctx, source="builtin")
