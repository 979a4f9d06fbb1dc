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


def _fresh(node: Node, ctx: TickContext) -> bool:
    return node.status is NodeStatus.ONLINE


def _below_ceiling(node: Node, ctx: TickContext) -> bool:
    return node.load is None or node.load < ctx.config["healing"]["overload_threshold"]


RULES: tuple[Rule, ...] = (
    Rule("heartbeat-fresh", "Nodes report a heartbeat within the stale window", _fresh, Severity.WARNING,
         "no fresh heartbeat"),
    Rule("load-ceiling", "Nodes stay below the overload threshold", _below_ceiling, Severity.WARNING,
         "load above the overload threshold"),
)


@hookimpl
def wyneos_governance(ctx: TickContext, nodes: Sequence[Node], licences: Mapping[str, LicenceResult]) -> list[RuleResult]:
    return evaluate(RULES, nodes, ctx, source="builtin")
