"""Builtin healing: offline nodes are isolated, overloaded nodes shed load to neighbours.

* a node that is ``offline`` (no heartbeat within ``heartbeat.offline_after``) is
  proposed for ``isolate`` (when ``healing.isolate_offline``);
* a node whose load has stayed above ``healing.overload_threshold`` for
  ``healing.overload_ticks`` consecutive ticks is proposed for ``reduce_load`` down to
  ``healing.target_load``: the ``propagate`` step moves the excess to healthy
  neighbours with spare capacity and reports load that found no room.

Proposals repeat every tick while their cause lasts; the ``decide`` step keeps one
action in force instead of issuing it again. The action ids are stable (same type,
target, origin and params), which is what makes that work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from wyneos_core import hookimpl
from wyneos_core.model import Action, ActionType, Node, NodeStatus, Severity, action_ids
from wyneos_core.nodetable import OFFLINE

if TYPE_CHECKING:
    from wyneos_core.tick import Orchestrator, TickContext

__all__ = ["overloaded_since"]


def overloaded_since(orchestrator: Orchestrator) -> dict[str, int]:
    """Node id -> first tick of its current run of overloaded ticks."""
    runs = getattr(orchestrator, "_overloaded_since", None)
    if runs is None:
        runs = orchestrator._overloaded_since = {}  # type: ignore[attr-defined]
    return runs


@hookimpl
def wyneos_healing(ctx: TickContext, nodes: Sequence[Node]) -> list[Action]:
    settings = ctx.config["healing"]
    threshold = settings["overload_threshold"]
    target_load = min(settings["target_load"], threshold)
    need = settings["overload_ticks"]
    isolate_offline = settings["isolate_offline"]
    runs = overloaded_since(ctx.orchestrator)
    tick = ctx.tick
    actions = []
    table = getattr(nodes, "table", None)
    if table is not None:  # the columns: only offline and overloaded nodes are looked at
        slots = nodes.slots  # type: ignore[attr-defined]
        status = table.status[slots]
        load = table.load[slots]
        offline = status == OFFLINE
        with np.errstate(invalid="ignore"):
            hot = ~offline & (load > threshold) & ~table.isolated[slots]
        ids = table.ids
        hot_ids = {ids[s] for s in slots[hot].tolist()}
        for node_id in [k for k in runs if k not in hot_ids]:  # a run ends when the node cools or goes offline
            del runs[node_id]
        chosen: list[tuple[bool, str, str]] = []  # (isolate?, node id, reason), in slot order
        for position in np.flatnonzero(offline | hot).tolist():
            node_id = ids[slots[position]]
            if offline[position]:
                if isolate_offline:
                    chosen.append((True, node_id, "offline: no heartbeat within the grace period"))
                continue
            first = runs.setdefault(node_id, tick)
            if tick - first + 1 >= need:
                chosen.append((False, node_id, f"overloaded: load {float(load[position]):g} > {threshold:g} for "
                                               f"{tick - first + 1} tick(s)"))
        # the ids of each kind in one pass (the same ids ``Action`` would work out one by one)
        isolate_ids = iter(action_ids(ActionType.ISOLATE, (c[1] for c in chosen if c[0]), "healing", {}))
        reduce_ids = iter(action_ids(ActionType.REDUCE_LOAD, (c[1] for c in chosen if not c[0]), "healing",
                                     {"target_load": target_load}))
        for isolate, node_id, reason in chosen:
            if isolate:
                actions.append(Action("isolate", node_id, reason, "healing", Severity.CRITICAL, {},
                                      next(isolate_ids)))
            else:
                actions.append(Action("reduce_load", node_id, reason, "healing", Severity.WARNING,
                                      {"target_load": target_load}, next(reduce_ids)))
        return actions
    offline_status = NodeStatus.OFFLINE
    for node in nodes:
        if node.status is offline_status:
            runs.pop(node.id, None)
            if isolate_offline:
                actions.append(Action(ActionType.ISOLATE, node.id, "offline: no heartbeat within the grace period",
                                      "healing", Severity.CRITICAL))
        elif node.load is not None and node.load > threshold and not node.isolated:
            first = runs.setdefault(node.id, tick)
            if tick - first + 1 >= need:
                actions.append(Action(
                    ActionType.REDUCE_LOAD, node.id,
                    f"overloaded: load {node.load:g} > {threshold:g} for {tick - first + 1} tick(s)",
                    "healing", Severity.WARNING, {"target_load": target_load},
                ))
        elif node.id in runs:
            del runs[node.id]
    return actions
