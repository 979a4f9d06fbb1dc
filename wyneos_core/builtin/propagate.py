"""Builtin propagation: one routing tree per tick, delivery level by level, effects.

Who must know an action:

* ``isolate``: the target and its neighbours (they must stop talking to it);
* ``reinstate``: the target and the neighbours its edges were restored to;
* ``reduce_load`` / ``redistribute``: the target and the neighbours taking its load;
* ``revoke`` or any action targeted at ``"*"``: every node;
* anything else: its target.

The tick computes one breadth-first routing tree from the orchestrator over the mesh,
avoiding offline nodes (O(nodes + edges), not a search per action). Each action goes
down the tree: every tree edge on the way to its targets is crossed once. The tick's
actions go down together, one tree level at a time, each level's hops in one call of
the ``wyneos_deliver_batch`` hook (``builtin/carry.py``); a hop that is not
acknowledged is retried up to ``propagate.retries`` times. The builtin batch transport
acknowledges every hop, or hands each hop to the per-hop ``wyneos_deliver`` hook when
another plugin implements it. A target that could not be reached is reported with the
reason: ``offline``, ``isolated``, ``partition`` (no mesh path from the orchestrator),
``relay_failed`` (a hop on its path never acknowledged) or ``unknown_node``. Targets
that did not acknowledge an action in force are tried again in later ticks once a route
exists (``propagate.redeliver``).

Effects, applied to the orchestrator's view of the cluster:

* ``reinstate`` restores the node's edges (before routing, so it and its neighbours hear
  of it); ``isolate`` cuts them (after routing, so the node hears of it first);
* ``reduce_load`` and ``redistribute`` plan load moves to healthy neighbours with spare
  capacity (up to ``healing.neighbour_max_load``) and carry the plan in the action's
  ``params["moves"]``; load that finds no room is reported;
* ``quarantine``, ``gate_feature`` and ``degrade`` restrict the node: while such an
  action is in force the node's ``metadata["restrictions"]`` says so (maintained by the
  orchestrator, overwriting whatever a heartbeat sent).

Mesh partitions (groups of nodes with no mesh path to the orchestrator, whatever their
status; isolated nodes are not counted) are detected each tick and listed in
``report.partitions``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from wyneos_core import hookimpl
from wyneos_core.action_params import action_problem, gated_features
from wyneos_core.builtin.carry import RELAY_PLUGIN, Carrier, HopBatch
from wyneos_core.builtin.decide import RESEND, RETRYABLE, DecideState, _stranded, event, state_of
from wyneos_core.mesh import Mesh
from wyneos_core.mesh_search import ArrayParents
from wyneos_core.model import ORIGIN, Action, ActionType, Delivery, PluginError
from wyneos_core.nodetable import ONLINE

if TYPE_CHECKING:
    from wyneos_core.tick import Orchestrator, TickContext

__all__ = [
    "LOAD_ACTIONS",
    "RELAY_PLUGIN",
    "RESTRICTING",
    "load_receivers",
    "plan_load_moves",
    "restrictions_of",
    "sync_restrictions",
    "targets_of",
]

log = logging.getLogger("wyneos.propagate")

LOAD_ACTIONS = frozenset({ActionType.REDUCE_LOAD.value, ActionType.REDISTRIBUTE.value})
RESTRICTING = frozenset({ActionType.QUARANTINE.value, ActionType.GATE_FEATURE.value, ActionType.DEGRADE.value})
_EPS = 1e-9
_WITH_NEIGHBOURS = frozenset({ActionType.ISOLATE.value, ActionType.REINSTATE.value})
_REDUCE_LOAD, _REINSTATE, _ISOLATE, _REVOKE = (ActionType.REDUCE_LOAD.value, ActionType.REINSTATE.value,
                                                ActionType.ISOLATE.value, ActionType.REVOKE.value)


@hookimpl
def wyneos_startup(orchestrator: Orchestrator) -> None:
    """Re-cut the mesh edges of nodes that were isolated when the orchestrator last stopped."""
    for node_id in orchestrator.registry.isolated_ids():
        if node_id in orchestrator.mesh:
            orchestrator.mesh.isolate(node_id)


# -- routing -------------------------------------------------------------------------------


def targets_of(action: Action, mesh: Mesh, ctx: TickContext) -> list[str]:
    """The nodes that must know ``action``, the target first."""
    if action.target == "*" or action.type == _REVOKE:
        return ctx.registry.ids()
    if action.type in _WITH_NEIGHBOURS and action.target in mesh:
        return [action.target, *sorted(n for n in mesh.neighbours(action.target) if n != ORIGIN)]
    if action.type in LOAD_ACTIONS:
        return [action.target, *sorted(action.params.get("moves", {}))]
    return [action.target]


# -- load ----------------------------------------------------------------------------------


def plan_load_moves(
    ctx: TickContext, action: Action, parent: Mapping[str, str], planned: dict[str, float],
    receivers: Mapping[str, tuple[list[str], list[float]]] | None = None,
) -> dict[str, Any]:
    """Plan where the load of ``action.target`` goes; update ``planned`` loads.

    ``reduce_load`` moves the load above ``params["target_load"]`` (default
    ``healing.target_load``); ``redistribute`` moves it down to ``params["target_load"]``
    (default 0: all of it). Receivers are the target's neighbours that are online, not
    isolated, reachable and below ``healing.neighbour_max_load``; the most spare first.
    ``receivers`` (from ``load_receivers``, for many actions at once) gives each
    target's healthy reachable neighbours and their loads; without it they are read here.

    :return: ``{"moves": {neighbour: amount}, "moved": x, "unplaced": y, "load": l}``.
    """
    healing = ctx.config["healing"]
    target = action.target
    table = ctx.registry.table  # the columns themselves: no node view per neighbour
    slot = table.slot_of(target)
    load = planned.get(target)
    if load is None and slot is not None:
        load = _opt(table.load.item(slot))
    found = receivers.get(target) if receivers is not None else None  # found: the target is in the mesh
    if slot is None or load is None or (found is None and target not in ctx.mesh):
        return {"moves": {}, "moved": 0.0, "unplaced": 0.0, "load": load, "why": "load unknown"}
    default = healing["target_load"] if action.type == _REDUCE_LOAD else 0.0
    goal = float(action.params.get("target_load", default))
    excess = load - goal
    if excess <= _EPS:
        return {"moves": {}, "moved": 0.0, "unplaced": 0.0, "load": load, "why": "at or below target"}
    ceiling = healing["neighbour_max_load"]
    names, loads = found if found is not None else load_receivers(ctx, [target], parent)[target]
    spare: list[tuple[float, str, float]] = []
    for n, base in zip(names, loads):
        other_load = planned.get(n, base)
        if other_load != other_load:  # NaN: load unknown
            continue
        room = ceiling - other_load
        if room > _EPS:
            spare.append((room, n, other_load))
    spare.sort(key=lambda item: (-item[0], item[1]))
    moves: dict[str, float] = {}
    left = excess
    for room, n, before in spare:
        if left <= _EPS:
            break
        amount = min(room, left)
        moves[n] = round(amount, 6)
        planned[n] = before + amount
        left -= amount
    moved = excess - left
    planned[target] = load - moved
    return {"moves": moves, "moved": round(moved, 6), "unplaced": round(max(left, 0.0), 6), "load": load,
            "why": "" if left <= _EPS else "no healthy neighbour with spare capacity for the rest"}


def load_receivers(ctx: TickContext, targets: Sequence[str],
                   parent: Mapping[str, str]) -> dict[str, tuple[list[str], list[float]]]:
    """Target -> its neighbours that may take load (online, not isolated, reachable) and
    their loads before any plan (NaN: unknown), read from the mesh's and the node table's
    columns for all targets at once."""
    mesh = ctx.mesh
    table = ctx.registry.table
    distinct = list(dict.fromkeys(t for t in targets if t in mesh))
    if isinstance(parent, ArrayParents) and parent.arrays is mesh.arrays():
        # the tree's own snapshot of the edges: neighbours by number, those it reaches
        at_slots = table.slots_of(distinct)
        numbers = parent.numbers(distinct)
        numbers[(at_slots < 0) | table.isolated[at_slots]] = -1  # an isolated node has no live edge
        owner, neighbour = parent.reached_neighbours(numbers)
        names = parent.arrays.names
        flat: list[str] = [names[i] for i in neighbour.tolist()]  # type: ignore[misc]
        owners = owner.tolist()
        reached = None
    else:
        lists = [mesh.neighbours(t) for t in distinct]
        flat = [n for names in lists for n in names]
        owners = [k for k, names in enumerate(lists) for _ in names]
        reached = np.fromiter((n in parent for n in flat), bool, len(flat))
    slots = table.slots_of(flat)  # -1: not a registered node
    ok = (slots >= 0) & (table.status[slots] == ONLINE) & ~table.isolated[slots]
    if reached is not None:
        ok &= reached
    out: dict[str, tuple[list[str], list[float]]] = {t: ([], []) for t in distinct}
    for k, n, good, load in zip(owners, flat, ok.tolist(), table.load[slots].tolist()):
        if good:
            names_, loads = out[distinct[k]]
            names_.append(n)
            loads.append(load)
    return out


def _opt(value: float) -> float | None:
    return None if value != value else value


# -- delivery ------------------------------------------------------------------------------

_Carrier = Carrier  # the name tests and older code import


def _summary(routed: Sequence[Delivery], ok: int) -> str:
    text = f"delivered to {ok}/{len(routed)}"
    missed = [d for d in routed if not d.delivered]
    if missed:
        shown = ", ".join(f"{d.target} ({d.reason})" for d in missed[:5])
        text += f"; unreachable: {shown}" + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
    return text


def _settings(ctx: TickContext) -> dict[str, Any]:
    settings = dict(ctx.config["propagate"])
    legacy = ctx.config.plugin_settings("propagate")
    if "retries" in legacy:
        settings["retries"] = int(legacy["retries"])
    return settings


def _refuse(ctx: TickContext, state: DecideState, action: Action, kind: str, error: str) -> None:
    """One action could not be carried: report it on its own and drop it from the actions
    in force, so its cause proposes it again (and it is tried again) next tick."""
    ctx.report.errors.append(PluginError(
        "propagate", "wyneos_propagate",
        f"action {action.type} for {action.target!r:.60} (origin {action.origin!r:.40}, id {action.id}): {error}",
        kind=kind))
    event(ctx, action, "failed", error)
    state.in_force.pop(action.id, None)


@hookimpl(trylast=True)
def wyneos_propagate(ctx: TickContext, actions: Sequence[Action], mesh: Mesh) -> list[Delivery]:
    state = state_of(ctx.orchestrator)
    settings = _settings(ctx)

    usable = []
    for action in actions:
        problem = action_problem(action.type, action.params)
        if problem is None:
            usable.append(action)
        else:
            _refuse(ctx, state, action, "invalid_result", f"not carried: {problem}")
    actions = usable

    # reinstate first: its edges are back before the tree is drawn, so it hears of it
    reinstated = False
    for action in actions:
        if action.type == _REINSTATE and action.target in mesh:
            restored = mesh.reinstate(action.target)
            node = ctx.registry.get(action.target)
            if node is not None:
                node.isolated = False
            event(ctx, action, "restored", f"restored {len(restored)} edge(s)", effect={"restored": sorted(restored)})
            reinstated = True

    pending_redelivery = settings["redeliver"] and any(h.pending for h in state.in_force.values())
    deliveries: list[Delivery] = []
    if actions or pending_redelivery:
        tree = ctx.routing_tree(refresh=reinstated)  # redrawn if reinstatements restored edges
        parent = tree.parent
        carrier = Carrier(ctx, tree, settings["retries"])
        planned: dict[str, float] = {}
        receivers = load_receivers(ctx, [a.target for a in actions if a.type in LOAD_ACTIONS], parent)
        effects: dict[str, dict[str, Any]] = {}
        jobs: list[tuple[Action, Sequence[str], str | None]] = []
        fresh_ok: list[Action] = []
        for action in actions:
            try:
                carried = action
                if action.type in LOAD_ACTIONS:
                    plan = plan_load_moves(ctx, action, parent, planned, receivers)
                    carried = Action(action.type, action.target, action.reason, action.origin, action.severity,
                                     {**action.params, "moves": plan["moves"]}, id=action.id)
                    effects[action.id] = plan
                direct = action.target if action.type == _REINSTATE else None
                jobs.append((carried, targets_of(carried, mesh, ctx), direct))
            except Exception as exc:  # noqa: BLE001 - one action never stops the others
                _refuse(ctx, state, action, "exception", f"{type(exc).__name__}: {exc}")
                effects.pop(action.id, None)
                continue
            fresh_ok.append(action)
        held_again: list[Any] = []
        if settings["redeliver"]:
            fresh = {a.id for a in actions}
            held_again = _redelivery_jobs(ctx, state, carrier, fresh, settings["max_redeliveries_per_tick"], jobs)
        routed_all = carrier.carry_all(jobs)
        for action, (carried, _, _), routed in zip(fresh_ok, jobs, routed_all):
            deliveries.extend(routed)
            ok = sum(1 for d in routed if d.delivered)
            event(ctx, action, "propagated", _summary(routed, ok), delivered=ok, targets=len(routed))
            held = state.in_force.get(action.id)
            if held is not None:
                held.carried = carried
                held.pending = {d.target: d.reason for d in routed if not d.delivered and d.reason in RETRYABLE}
        for held, routed in zip(held_again, routed_all[len(fresh_ok):]):
            deliveries.extend(_redelivered(ctx, held, routed))
        _apply_effects(ctx, state, fresh_ok, mesh, effects)
        ctx.scratch["propagate"] = {"hops": carrier.hops, "retried": carrier.retried}
    # partitions: after the effects, over the mesh as it now is
    # structural: offline nodes count as members of the partition they sit in
    reshaped = any(a.type in _WITH_NEIGHBOURS for a in actions)
    ctx.report.partitions = mesh.partitions(ctx.mesh_tree(refresh=reshaped))
    if ctx.report.partitions:
        cut = sum(len(g) for g in ctx.report.partitions)
        ours = len(_stranded(ctx, {v for g in ctx.report.partitions for v in g})) if mesh.isolated else 0
        ctx.note(f"partition: {cut} node(s) in {len(ctx.report.partitions)} group(s) have no mesh path "
                 "to the orchestrator" + (f" ({ours} of them only because of isolations in force)" if ours else ""))
    sync_restrictions(ctx, state)
    return deliveries


def _redelivery_jobs(ctx: TickContext, state: DecideState, carrier: Carrier, fresh: set[str], budget: int,
                     jobs: list[tuple[Action, Sequence[str], str | None]]) -> list[Any]:
    """Append to ``jobs`` the actions in force with targets still to reach that now have a
    route (at most ``budget`` targets in all); return their ``InForce`` records, in order."""
    held_again: list[Any] = []
    parent = carrier.parent
    for action_id, held in list(state.in_force.items()):
        if budget <= 0:
            break
        if action_id in fresh or not held.pending:
            continue
        try:
            action = held.carried or held.action
            if RESEND in held.pending:  # restored after a restart without its delivery record
                held.pending = {t: "restart" for t in targets_of(action, carrier.mesh, ctx)}
            ready = [t for t in held.pending if t in parent or carrier.witness_route(t) is not None][:budget]
        except Exception as exc:  # noqa: BLE001 - one action never stops the others
            _refuse(ctx, state, held.action, "exception", f"redelivery: {type(exc).__name__}: {exc}")
            continue
        if not ready:
            continue
        budget -= len(ready)
        jobs.append((action, ready, None))
        held_again.append(held)
    return held_again


def _redelivered(ctx: TickContext, held: Any, routed: list[Delivery]) -> list[Delivery]:
    for d in routed:
        if d.delivered:
            held.pending.pop(d.target, None)
        elif d.reason in RETRYABLE:
            held.pending[d.target] = d.reason
        else:
            held.pending.pop(d.target, None)
    ok = sum(1 for d in routed if d.delivered)
    event(ctx, held.action, "redelivered", _summary(routed, ok), delivered=ok, targets=len(routed))
    return routed


def _apply_effects(ctx: TickContext, state: DecideState, actions: Sequence[Action], mesh: Mesh,
                   effects: Mapping[str, dict[str, Any]]) -> None:
    unplaced: list[str] = []
    for action in actions:
        try:
            _apply_one(ctx, action, mesh, effects, unplaced)
        except Exception as exc:  # noqa: BLE001 - one action never stops the others
            _refuse(ctx, state, action, "exception", f"effect: {type(exc).__name__}: {exc}")
    if unplaced:
        ctx.note("no spare capacity: load left on " + ", ".join(unplaced[:10])
                 + (f" and {len(unplaced) - 10} more" if len(unplaced) > 10 else ""))


def _apply_one(ctx: TickContext, action: Action, mesh: Mesh, effects: Mapping[str, dict[str, Any]],
               unplaced: list[str]) -> None:
    node = ctx.registry.get(action.target) if action.type == _ISOLATE else None
    if node is not None and action.target in mesh:
        cut = mesh.isolate(action.target)
        node.isolated = True
        event(ctx, action, "in_force", f"cut {len(cut)} edge(s)", effect={"cut": sorted(cut)})
    elif action.type == _REINSTATE:
        event(ctx, action, "in_force", "edges restored")
        event(ctx, action, "cleared", "reinstated")
    elif action.type in LOAD_ACTIONS and action.id in effects:
        plan = effects[action.id]
        moves = plan["moves"]
        detail = (f"moved {plan['moved']:.3f} of load to {len(moves)} neighbour(s)"
                  if moves else "no load moved")
        if plan["unplaced"] > _EPS:
            detail += f"; {plan['unplaced']:.3f} found no spare capacity"
            unplaced.append(f"{action.target} ({plan['unplaced']:.3f})")
        event(ctx, action, "in_force", detail, effect=plan)
    elif action.type in RESTRICTING:
        event(ctx, action, "in_force", f"node restricted: {action.type}")
    else:
        event(ctx, action, "in_force")


def restrictions_of(state: DecideState) -> dict[str, dict[str, Any]]:
    """Node id -> restrictions implied by the quarantine / gate_feature / degrade actions in force."""
    out: dict[str, dict[str, Any]] = {}
    for held in state.in_force.values():
        action = held.action
        if action.type not in RESTRICTING:
            continue
        entry = out.setdefault(action.target, {})
        if action.type == ActionType.QUARANTINE.value:
            entry["quarantined"] = action.reason
        elif action.type == ActionType.DEGRADE.value:
            entry["degraded"] = action.reason
        else:
            gated = set(entry.get("gated_features", [])) | set(gated_features(action.params))
            entry["gated_features"] = sorted(gated)
    return out


def sync_restrictions(ctx: TickContext, state: DecideState) -> None:
    """Write each node's restrictions into ``metadata["restrictions"]``; lift cleared ones.

    Metadata dicts are replaced, never mutated (earlier tick reports share them). Only the
    nodes restricted now or at the last sync are looked at, except on the first sync of a
    node table and after nodes joined or left: then every node is (restrictions restored
    from the state file, or given with a node's metadata, are taken in hand there).
    """
    wanted = restrictions_of(state)
    table = ctx.registry.table  # the metadata column: one list, no view per node
    metadata, ids = table.metadata, table.ids
    orchestrator = ctx.orchestrator
    synced = getattr(orchestrator, "_restrictions_synced", None)
    if synced is not None and synced[0] is table and synced[1] == table.membership:
        touched = list(synced[2] | state.restricted | wanted.keys())  # (a decide state may be replaced)
        slots = [s for s in table.slots_of(touched).tolist() if s >= 0]
    else:
        slots = table.slots().tolist()
    for slot in slots:
        md = metadata[slot]
        entry = wanted.get(ids[slot]) if wanted else None  # type: ignore[arg-type]
        if entry is not None:
            if md.get("restrictions") != entry:
                metadata[slot] = {**md, "restrictions": entry}
        elif "restrictions" in md:
            # lifted, or claimed by a heartbeat: only the orchestrator sets restrictions
            metadata[slot] = {k: v for k, v in md.items() if k != "restrictions"}
    state.restricted = set(wanted)
    orchestrator._restrictions_synced = (table, table.membership, state.restricted)  # type: ignore[attr-defined]


@hookimpl(trylast=True)
def wyneos_deliver_batch(ctx: TickContext, hops: HopBatch) -> Any:
    """The builtin batch transport: acknowledges every hop (in-process cluster), unless
    another plugin implements the per-hop ``wyneos_deliver``: then each hop goes through
    that hook (first result; this module's own per-hop transport answers last)."""
    pm = ctx.orchestrator.pm
    here = sys.modules[__name__]
    if any(impl.plugin is not here for impl in pm.hook.wyneos_deliver.get_hookimpls()):
        call, errors = pm.call_each, ctx.report.errors
        acks = []
        for action, sender, receiver in hops:
            answer = call("wyneos_deliver", errors, firstresult=True, ctx=ctx, action=action, sender=sender,
                          receiver=receiver)
            acks.append(bool(answer) and answer[0][1] is True)
        return acks
    if log.isEnabledFor(logging.DEBUG):
        log.debug("tick %d: level %d, attempt %d: %d hop(s) of %d action(s) acknowledged", ctx.tick, hops.level,
                  hops.attempt, len(hops), len(hops.actions))
        for action, sender, receiver in hops:
            log.debug("tick %d: %s %s: %s -> %s", ctx.tick, action.type, action.target, sender, receiver)
    return True


@hookimpl(trylast=True)
def wyneos_deliver(ctx: TickContext, action: Action, sender: str, receiver: str) -> bool:
    """The builtin per-hop transport: logs the hop and acknowledges it (in-process cluster)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("tick %d: %s %s: %s -> %s", ctx.tick, action.type, action.target, sender, receiver)
    return True
