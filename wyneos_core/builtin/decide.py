"""Builtin decision step: merge, de-duplicate, keep in force, limit, clear, reinstate.

Action lifecycle (every transition is a ``report.lifecycle`` event and, through the
builtin ``state`` plugin, a row of the store's ``action_events`` table)::

    proposed -> approved -> propagated -> in_force -> cleared
             -> deferred    rate limit reached; proposed again next tick
             -> suppressed  safety stop, or the target sits in a mesh partition

``propagated`` and ``in_force`` are written by the ``propagate`` step, which carries the
action and applies its effect. An action in force is not issued again while its cause
persists (its cause proposes it again each tick, with the same stable id). When it has
not been proposed for more than ``decide.keep_firing_ticks`` ticks its cause has
cleared and so has the action. An isolation that cleared is followed by a
``reinstate`` once the node has been online for its probation.

Safety limits (as the Kubernetes node controller has them):

* at most ``decide.max_isolations_per_tick`` new isolations per tick (the rest are
  deferred to the next tick);
* **safety stop**: when more than ``decide.max_unhealthy_fraction`` of the nodes look
  unhealthy at once (stale, offline or cut off from the orchestrator), or more than
  ``decide.max_partitioned_fraction`` sit in mesh partitions, no new isolation is
  approved and no isolation is released: the orchestrator itself is more likely cut off
  than half the fleet broken. The tick report's notes say why;
* a node in a mesh partition is not isolated for being unreachable (the network failed,
  not the node; the isolation could not even be delivered).

Flapping protection: the probation before a reinstate doubles with each isolation of
the same node within ``decide.flap_window_ticks`` ticks (capped at
``decide.max_probation_ticks``), so a node that keeps coming and going is held out
longer and longer instead of being isolated and reinstated every few ticks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wyneos_core import hookimpl
from wyneos_core.model import Action, ActionType, NodeStatus, Severity
from wyneos_core.tick import Orchestrator, TickContext

__all__ = [
    "DecideState",
    "InForce",
    "ISOLATING",
    "Probation",
    "event",
    "in_force_actions",
    "state_of",
]

ISOLATING = frozenset({ActionType.ISOLATE.value})
_UNHEALTHY = (NodeStatus.OFFLINE, NodeStatus.STALE)


@dataclass(slots=True)
class InForce:
    """An approved action and what is known of it since."""

    action: Action
    first_tick: int
    #: last tick its cause proposed it
    last_tick: int
    #: target -> reason, for targets that have not acknowledged it yet (redelivered later)
    pending: dict[str, str] = field(default_factory=dict)
    #: the action as carried to its targets (with the load moves planned for it)
    carried: Action | None = None


@dataclass(slots=True)
class Probation:
    """A node whose isolation cleared, waiting to be reinstated."""

    since: int
    required: int


@dataclass(slots=True)
class DecideState:
    """What the decide step remembers across ticks (rebuilt from the store on restart)."""

    in_force: dict[str, InForce] = field(default_factory=dict)
    probation: dict[str, Probation] = field(default_factory=dict)
    #: node id -> ticks at which it was isolated (flap history, trimmed to the window)
    isolations: dict[str, list[int]] = field(default_factory=dict)
    #: action id -> "deferred" | "suppressed", to report a hold once rather than every tick
    held: dict[str, str] = field(default_factory=dict)
    #: whether a safety stop was on in the previous tick
    stopped: bool = False
    #: nodes whose ``metadata["restrictions"]`` the orchestrator maintains
    restricted: set[str] = field(default_factory=set)


def event(ctx: TickContext, action: Action, state: str, detail: str = "", **extra: Any) -> None:
    """Append one lifecycle transition of ``action`` to the tick report."""
    entry = {"action_id": action.id, "type": action.type, "target": action.target, "state": state,
             "detail": detail}
    if extra:
        entry.update(extra)
    ctx.report.lifecycle.append(entry)


def state_of(orchestrator: Orchestrator) -> DecideState:
    """The decide state of ``orchestrator``, restored from its store the first time."""
    state = getattr(orchestrator, "_decide_state", None)
    if state is None:
        state = DecideState()
        if orchestrator.store is not None:
            _restore(state, orchestrator)
        orchestrator._decide_state = state  # type: ignore[attr-defined]
    return state


def _restore(state: DecideState, orchestrator: Orchestrator) -> None:
    store = orchestrator.store
    assert store is not None
    tick = store.last_tick()
    for row in store.actions("in_force"):
        action = Action(row["type"], row["target"], row["reason"], row["origin"],
                        Severity(row["severity"]), row["params"], row["id"])
        state.in_force[action.id] = InForce(action, row["first_tick"], row["last_tick"])
    window = orchestrator.config["decide"]["flap_window_ticks"]
    kinds = {row["id"]: row for row in store.actions()}
    for ev in store.action_events(since_tick=max(0, tick - window)):
        row = kinds.get(ev["action_id"])
        if row is not None and row["type"] in ISOLATING and ev["state"] == "approved":
            state.isolations.setdefault(row["target"], []).append(ev["tick"])
    isolated_by_action = {h.action.target for h in state.in_force.values() if h.action.type in ISOLATING}
    probation = orchestrator.config["decide"]["probation_ticks"]
    for node in orchestrator.registry:
        if node.isolated and node.id not in isolated_by_action:
            state.probation[node.id] = Probation(tick, probation)


def _partitioned(ctx: TickContext) -> set[str]:
    mesh = ctx.mesh
    reach = ctx.mesh_tree().parent
    isolated = mesh.isolated
    return {n.id for n in ctx.registry if n.id not in reach and n.id not in isolated and n.id in mesh}


def _flap_probation(state: DecideState, node_id: str, tick: int, settings: dict[str, Any]) -> int:
    history = state.isolations.get(node_id, [])
    recent = [t for t in history if tick - t <= settings["flap_window_ticks"]]
    state.isolations[node_id] = recent
    base = settings["probation_ticks"]
    if len(recent) <= 1:
        return base
    return min(settings["max_probation_ticks"], max(base, 1) * 2 ** (len(recent) - 1))


def _hold(ctx: TickContext, state: DecideState, action: Action, kind: str, detail: str) -> None:
    if state.held.get(action.id) != kind:
        state.held[action.id] = kind
        event(ctx, action, kind, detail)


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
    partitioned = _partitioned(ctx)
    unhealthy = sum(1 for n in nodes if n.status in _UNHEALTHY or n.id in partitioned)
    fraction = unhealthy / total if total else 0.0
    cut_fraction = len(partitioned) / total if total else 0.0
    reasons = []
    if total and fraction > settings["max_unhealthy_fraction"]:
        reasons.append(f"{unhealthy}/{total} nodes ({fraction:.0%}) look unhealthy, more than "
                       f"decide.max_unhealthy_fraction={settings['max_unhealthy_fraction']:g}")
    if total and cut_fraction > settings["max_partitioned_fraction"]:
        reasons.append(f"{len(partitioned)}/{total} nodes ({cut_fraction:.0%}) have no mesh path to the "
                       f"orchestrator, more than decide.max_partitioned_fraction="
                       f"{settings['max_partitioned_fraction']:g}")
    safety_stop = bool(reasons)
    if safety_stop:
        ctx.note("safety stop: " + "; ".join(reasons) + ": automatic isolation paused "
                 "(the orchestrator itself may be cut off)")
    elif state.stopped:
        ctx.note("safety stop lifted: automatic isolation resumes")
    state.stopped = safety_stop
    budget = settings["max_isolations_per_tick"]

    decided: list[Action] = []
    deferred = suppressed = 0
    cut_off = {h.action.target for h in state.in_force.values() if h.action.type in ISOLATING}
    for action in unique.values():
        held = state.in_force.get(action.id)
        if held is not None:
            held.last_tick = tick
            continue
        if action.type in ISOLATING and action.target not in cut_off and action.target in state.probation:
            # the node is still cut off, waiting out its probation: the isolation resumes
            del state.probation[action.target]
            cut_off.add(action.target)
            state.isolations.setdefault(action.target, []).append(tick)
            state.held.pop(action.id, None)
            state.in_force[action.id] = InForce(action, tick, tick)
            event(ctx, action, "proposed", action.reason)
            event(ctx, action, "approved", "resumed: the node is still isolated (probation interrupted)")
            event(ctx, action, "in_force", "edges still cut")
            continue
        if action.type in ISOLATING and action.target not in cut_off:
            if safety_stop:
                _hold(ctx, state, action, "suppressed", "safety stop")
                suppressed += 1
                continue
            if action.target in partitioned:
                _hold(ctx, state, action, "suppressed", "target is in a mesh partition")
                suppressed += 1
                continue
            if budget <= 0:
                _hold(ctx, state, action, "deferred", "decide.max_isolations_per_tick reached")
                deferred += 1
                continue
            budget -= 1
        state.held.pop(action.id, None)
        event(ctx, action, "proposed", action.reason)
        event(ctx, action, "approved")
        state.in_force[action.id] = InForce(action, tick, tick)
        decided.append(action)
        if action.type in ISOLATING and action.target not in cut_off:
            cut_off.add(action.target)
            state.probation.pop(action.target, None)
            state.isolations.setdefault(action.target, []).append(tick)
    if deferred:
        ctx.note(f"rate limit: {deferred} isolation(s) deferred to the next tick "
                 f"(decide.max_isolations_per_tick={settings['max_isolations_per_tick']})")
    if suppressed and not safety_stop:
        ctx.note(f"partition hold: {suppressed} isolation(s) of nodes in a mesh partition not approved")
    # holds whose cause went away are forgotten, so a new hold is reported again
    for action_id in [a for a in state.held if a not in unique]:
        del state.held[action_id]

    _clear(ctx, state, settings, safety_stop, partitioned)
    decided.extend(_reinstate(ctx, state, settings))
    ctx.scratch["decide"] = {
        "in_force": len(state.in_force),
        "safety_stop": safety_stop,
        "safety_reasons": reasons,
        "unhealthy_fraction": round(fraction, 4),
        "partitioned": partitioned,
        "deferred": deferred,
        "suppressed": suppressed,
    }
    return decided


def _clear(ctx: TickContext, state: DecideState, settings: dict[str, Any], safety_stop: bool,
           partitioned: set[str]) -> None:
    tick = ctx.tick
    keep = settings["keep_firing_ticks"]
    for action_id, held in list(state.in_force.items()):
        if held.last_tick == tick or tick - held.last_tick <= keep:
            continue
        action = held.action
        if action.type in ISOLATING and (safety_stop or action.target in partitioned):
            continue  # do not release isolations on evidence we distrust
        del state.in_force[action_id]
        event(ctx, action, "cleared", f"cause resolved {tick - held.last_tick} tick(s) ago")
        still_isolated = any(h.action.target == action.target and h.action.type in ISOLATING
                             for h in state.in_force.values())
        if action.type in ISOLATING and action.target in ctx.registry and not still_isolated:
            required = _flap_probation(state, action.target, tick, settings)
            state.probation[action.target] = Probation(tick, required)


def _reinstate(ctx: TickContext, state: DecideState, settings: dict[str, Any]) -> Iterable[Action]:
    tick = ctx.tick
    nodes = ctx.registry
    out = []
    for node_id, prob in list(state.probation.items()):
        node = nodes.get(node_id)
        if node is None:
            del state.probation[node_id]
            continue
        if node.status is not NodeStatus.ONLINE:
            prob.since = tick  # probation restarts until the node is healthy again
            continue
        if tick - prob.since >= prob.required:
            del state.probation[node_id]
            action = Action(ActionType.REINSTATE, node_id,
                            f"online for {prob.required} tick(s) of probation after its isolation cleared",
                            "decide", Severity.INFO, {"tick": tick})
            event(ctx, action, "proposed", action.reason)
            event(ctx, action, "approved", f"probation {prob.required} tick(s)")
            out.append(action)
    return out


def in_force_actions(orchestrator: Orchestrator) -> list[dict[str, Any]]:
    """Every action in force, as dicts with ``first_tick``, ``last_tick`` and ``pending``."""
    state = state_of(orchestrator)
    return [
        {**held.action.to_dict(), "first_tick": held.first_tick, "last_tick": held.last_tick,
         "pending": dict(held.pending)}
        for held in state.in_force.values()
    ]
