"""Builtin governance: a few Python rules every cluster wants, on by default.

* ``heartbeat-fresh``: the node's last heartbeat is not stale or missing.
* ``load-ceiling``: the node's load is below ``healing.overload_threshold``.

Turn them off with ``plugins.disable: [governance]`` (YAML rulesets then take over).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from wyneos_core import hookimpl
from wyneos_core.model import LicenceResult, Node, NodeStatus, RuleResult, RuleResults, Severity
from wyneos_core.nodetable import ONLINE
from wyneos_core.pyrules import Rule

if TYPE_CHECKING:
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
def wyneos_governance(ctx: TickContext, nodes: Sequence[Node], licences: Mapping[str, LicenceResult]) -> RuleResults:
    """The two rules as two filters: only the nodes that fail become results; those that
    pass are counted (``RuleResults``). Same outcomes as ``evaluate(rules(...), nodes)``."""
    threshold = ctx.config["healing"]["overload_threshold"]
    fresh, load = rules(threshold)
    table = getattr(nodes, "table", None)
    if table is not None:  # the columns
        slots, ids = nodes.slots, table.ids  # type: ignore[attr-defined]
        stale = [ids[s] for s in slots[table.status[slots] != ONLINE].tolist()]
        with np.errstate(invalid="ignore"):
            hot = [ids[s] for s in slots[table.load[slots] >= threshold].tolist()]  # NaN (no load) passes
    else:
        online = _ONLINE
        stale = [n.id for n in nodes if n.status is not online]
        hot = [n.id for n in nodes if (v := n.load) is not None and not v < threshold]
    out = RuleResults(passed_counts={fresh.id: len(nodes) - len(stale), load.id: len(nodes) - len(hot)})
    for rule, failed in ((fresh, stale), (load, hot)):
        message = rule.message or rule.description
        out.extend(RuleResult(rule.id, node_id, False, message, rule.severity, "builtin") for node_id in failed)
    return out
