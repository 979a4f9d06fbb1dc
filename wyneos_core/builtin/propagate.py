"""Builtin propagation: one routing tree per tick, hop-by-hop delivery, effects on the mesh.

Who must know an action:

* ``isolate``: the target and its neighbours (they must stop talking to it);
* ``revoke`` or any action targeted at ``"*"``: every reachable node;
* anything else: its target.

Each action travels down the routing tree from the orchestrator; every tree edge is
crossed once per action (``wyneos_deliver`` for each hop, retried up to
``propagate.retries`` times). A target with no route is reported with the reason:
``offline``, ``isolated``, ``partition`` (no path from the origin) or ``unknown_node``;
one below a hop that kept refusing is ``relay_failed``. After delivery ``isolate`` cuts
the target's edges and ``reinstate`` restores them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from wyneos_core import hookimpl
from wyneos_core.mesh import Mesh, RoutingTree
from wyneos_core.model import ORIGIN, Action, ActionType, Delivery, NodeStatus
from wyneos_core.tick import TickContext

log = logging.getLogger("wyneos.propagate")


def targets_of(action: Action, mesh: Mesh, ctx: TickContext) -> list[str]:
    if action.target == "*" or action.type == ActionType.REVOKE.value:
        return [n.id for n in ctx.registry]
    if action.type == ActionType.ISOLATE.value and action.target in mesh:
        return [action.target, *sorted(n for n in mesh.neighbours(action.target) if n != ORIGIN)]
    return [action.target]


def _avoid(ctx: TickContext) -> dict[str, str]:
    return {n.id: "offline" for n in ctx.registry if n.status is NodeStatus.OFFLINE}


@hookimpl(trylast=True)
def wyneos_propagate(ctx: TickContext, actions: Sequence[Action], mesh: Mesh) -> list[Delivery]:
    deliveries: list[Delivery] = []
    if actions:
        tree = mesh.routing_tree(_avoid(ctx))
        retries = int(ctx.config.plugin_settings("propagate").get("retries", 2))
        deliver = ctx.orchestrator.pm.call_each
        errors = ctx.report.errors
        for action in actions:
            routed = _route(ctx, action, targets_of(action, mesh, ctx), tree, mesh, deliver, errors, retries)
            ok = sum(1 for d in routed if d.delivered)
            ctx.report.lifecycle.append({"action_id": action.id, "type": action.type, "target": action.target,
                                         "state": "propagated", "detail": f"delivered to {ok}/{len(routed)}"})
            deliveries.extend(routed)
    ctx.report.partitions = mesh.partitions(_avoid(ctx)) if len(mesh) < 200_000 else []
    _apply_effects(ctx, actions, mesh)
    return deliveries


def _route(ctx, action, targets, tree: RoutingTree, mesh, deliver, errors, retries) -> list[Delivery]:
    parent = tree.parent
    out: list[Delivery] = []
    reachable: list[str] = []
    for target in targets:
        if target not in mesh:
            out.append(Delivery(action.id, target, False, [], "unknown_node"))
        elif target in parent:
            reachable.append(target)
        elif target in tree.avoided and not (action.type == ActionType.REINSTATE.value and target == action.target):
            out.append(Delivery(action.id, target, False, [], tree.avoided[target]))
        elif action.type == ActionType.REINSTATE.value and target == action.target:
            # an isolated node has no edges until reinstated: the orchestrator tells it directly
            reachable.append(target)
        else:
            out.append(Delivery(action.id, target, False, [], "partition"))
    # hops needed: union of tree paths, parents before children
    hops: list[tuple[str, str]] = []
    seen: set[str] = {ORIGIN}
    for target in reachable:
        chain = []
        v = target
        while v not in seen:
            p = parent.get(v, ORIGIN)
            chain.append((p, v))
            seen.add(v)
            v = p
        hops.extend(reversed(chain))
    failed: set[str] = set()
    for sender, receiver in hops:
        if sender in failed:
            failed.add(receiver)
            continue
        ok = False
        for _ in range(retries + 1):
            answer = deliver("wyneos_deliver", errors, firstresult=True, ctx=ctx, action=action,
                             sender=sender, receiver=receiver)
            if answer and answer[0][1]:
                ok = True
                break
        if not ok:
            failed.add(receiver)
    for target in reachable:
        path = tree.path(target) if target in parent else [ORIGIN, target]
        if target in failed:
            out.append(Delivery(action.id, target, False, path, "relay_failed"))
        else:
            out.append(Delivery(action.id, target, True, path))
    return out


def _apply_effects(ctx: TickContext, actions: Sequence[Action], mesh: Mesh) -> None:
    for action in actions:
        node = ctx.registry.get(action.target)
        if node is None or action.target not in mesh:
            continue
        if action.type == ActionType.ISOLATE.value:
            cut = mesh.isolate(action.target)
            node.isolated = True
            ctx.report.lifecycle.append({"action_id": action.id, "type": action.type, "target": action.target,
                                         "state": "in_force", "detail": f"cut {len(cut)} edge(s)"})
        elif action.type == ActionType.REINSTATE.value:
            restored = mesh.reinstate(action.target)
            node.isolated = False
            ctx.report.lifecycle.append({"action_id": action.id, "type": action.type, "target": action.target,
                                         "state": "in_force", "detail": f"restored {len(restored)} edge(s)"})
        else:
            ctx.report.lifecycle.append({"action_id": action.id, "type": action.type, "target": action.target,
                                         "state": "in_force", "detail": ""})


@hookimpl(trylast=True)
def wyneos_deliver(ctx: TickContext, action: Action, sender: str, receiver: str) -> bool:
    """The builtin transport: logs the hop and acknowledges it (in-process cluster)."""
    log.debug("tick %d: %s %s -> %s (%s -> %s)", ctx.tick, action.type, action.target, receiver, sender, receiver)
    return True
