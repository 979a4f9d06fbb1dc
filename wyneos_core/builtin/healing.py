"""Builtin healing: offline nodes are isolated, overloaded nodes get their load reduced."""

from __future__ import annotations

from collections.abc import Sequence

from wyneos_core import hookimpl
from wyneos_core.model import Action, ActionType, Node, NodeStatus, Severity
from wyneos_core.tick import TickContext


@hookimpl
def wyneos_healing(ctx: TickContext, nodes: Sequence[Node]) -> list[Action]:
    settings = ctx.config["healing"]
    threshold = settings["overload_threshold"]
    isolate_offline = settings["isolate_offline"]
    offline = NodeStatus.OFFLINE
    actions = []
    for node in nodes:
        if node.status is offline:
            if isolate_offline:
                actions.append(Action(ActionType.ISOLATE, node.id, "offline: no heartbeat within the grace period",
                                      "healing", Severity.CRITICAL))
        elif node.load is not None and node.load > threshold:
            actions.append(Action(ActionType.REDUCE_LOAD, node.id, f"overloaded: load {node.load:.2f} > {threshold:g}",
                                  "healing", Severity.WARNING, {"target_load": threshold}))
    return actions
