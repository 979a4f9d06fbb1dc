"""Builtin decision step: merge, de-duplicate, keep in force, limit.

Action lifecycle (each transition goes to the tick report and the state store):

    proposed -> approved -> propagated -> in_force -> cleared
             -> deferred   (rate limit: proposed again next tick)
             -> suppressed (safety stop: too much of the cluster looks unhealthy)

An action in force is not issued again while its cause persists (it is proposed again
each tick). When a tick passes without it being proposed, its cause has cleared: it is
cleared, and an isolation is followed by a ``reinstate`` once the node has been healthy
for ``decide.probation_ticks`` ticks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wyneos_core import hookimpl
from wyneos_core.model import Action, ActionType, NodeStatus, Severity
from wyneos_core.tick import Orchestrator, TickContext

ISOLATING = frozenset({ActionType.ISOLATE.value})


@dataclass(slots=True)
class InForce:
    action: Action
    first_tick: int
    last_tick: int


@dataclass(slots=True)
class DecideState:
    in_force: dict[str, InForce] = field(default_factory=dict)
    #: node id -> tick its isolation was cleared (waiting for probation)
    probation: dict[str, int] = field(default_factory=dict)


def _event(ctx: TickContext, action: Action, state: str, detail: str = "") -> None:
    ctx.report.lifecycle.append({"action_id": action.id, "type": action.type, "target": action.target,
                                 "state": state, "detail": detail})


def state_of(orchestrator: Orchestrator) -> DecideState:
    state = getattr(orchestrator, "_decide_state", None)
    if state is None:
        state = DecideState()
        if orchestrator.store is not None:
            for row in orchestrator.store.actions("in_force"):
                action = Action(row["type"], row["target"], row["reason"], row["origin"],
                                Severity(row["severity"]), row["params"], row["id"])
                state.in_force[action.id] = InForce(action, row["first_tick"], row["last_tick"])
        orchestrator._decide_state = state  # type: ignore[attr-defined]
    return state


@hookimpl(trylast=True)
def wyneos_decide(ctx: TickContext, proposed: Sequence[Action]) -> list[Action]:
    state = state_of(ctx.orchestrator)
    settings = ctx.config["decide"]
    tick = ctx.tick

    unique: dict[str, Action] = {}
    for action in proposed:
        unique.setdefault(action.id, action)

    nodes = ctx.registry
    total = len(nodes)
    unhealthy = sum(1 for n in nodes if n.status in (NodeStatus.OFFLINE, NodeStatus.STALE))
    fraction = unhealthy / total if total else 0.0
    safety_stop = total > 0 and fraction > settings["max_unhealthy_fraction"]
    if safety_stop:
        ctx.note(
            f"safety stop: {unhealthy}/{total} nodes ({fraction:.0%}) look unhealthy, more than "
            f"decide.max_unhealthy_fraction={settings['max_unhealthy_fraction']:g}; automatic isolation paused "
            "(the orchestrator itself may be cut off)"
        )
    budget = settings["max_isolations_per_tick"]

    decided: list[Action] = []
    for action in unique.values():
        held = state.in_force.get(action.id)
        if held is not None:
            held.last_tick = tick
            continue
        if action.type in ISOLATING:
            if safety_stop:
                _event(ctx, action, "suppressed", "safety stop")
                continue
            if budget <= 0:
                _event(ctx, action, "deferred", "decide.max_isolations_per_tick reached")
                continue
            budget -= 1
        _event(ctx, action, "proposed")
        _event(ctx, action, "approved")
        state.in_force[action.id] = InForce(action, tick, tick)
        decided.append(action)
        if action.type in ISOLATING:
            state.probation.pop(action.target, None)

    # causes that cleared
    for action_id, held in list(state.in_force.items()):
        if held.last_tick == tick:
            continue
        if held.action.type in ISOLATING and safety_stop:
            held.last_tick = tick  # do not release isolations on evidence we distrust
            continue
        del state.in_force[action_id]
        _event(ctx, held.action, "cleared", "cause resolved")
        if held.action.type in ISOLATING:
            state.probation[held.action.target] = tick

    # probation over: reinstate
    probation = settings["probation_ticks"]
    for node_id, since in list(state.probation.items()):
        node = nodes.get(node_id)
        if node is None:
            del state.probation[node_id]
            continue
        if node.status is not NodeStatus.ONLINE:
            state.probation[node_id] = tick  # probation restarts until healthy
            continue
        if tick - since >= probation:
            del state.probation[node_id]
            action = Action(ActionType.REINSTATE, node_id, f"healthy for {probation} tick(s) after its isolation cleared",
                            "decide", Severity.INFO, {"tick": tick})
            _event(ctx, action, "approved")
            decided.append(action)
    ctx.scratch["decide"] = {"in_force": len(state.in_force), "safety_stop": safety_stop}
    return decided


def in_force_actions(orchestrator: Orchestrator) -> list[dict[str, Any]]:
    state = state_of(orchestrator)
    return [
        {**held.action.to_dict(), "first_tick": held.first_tick, "last_tick": held.last_tick}
        for held in state.in_force.values()
    ]
