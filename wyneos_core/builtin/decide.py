"""Builtin decision step: merge, de-duplicate, keep in force, limit, clear, reinstate.

Action lifecycle (every transition is a ``report.lifecycle`` event and, through the
builtin ``state`` plugin, a row of the store's ``action_events`` table)::

    proposed -> approved -> propagated -> in_force -> cleared
             -> deferred    rate limit reached; proposed again next tick
             -> suppressed  safety stop, strand hold or partition hold
             -> rejected    unusable params or target (reported as an error)

``propagated`` and ``in_force`` are written by the ``propagate`` step, which carries the
action and applies its effect. An action in force is not issued again while its cause
persists (its cause proposes it again each tick, with the same stable id). When it has
not been proposed for more than ``decide.keep_firing_ticks`` ticks its cause has
cleared and so has the action. An isolation that cleared is followed by a
``reinstate`` once the node has been online for its probation.

Safety limits (as the Kubernetes node controller has them):

* at most ``decide.max_isolations_per_tick`` new isolations per tick (the rest are
  deferred to the next tick);
* **safety stop**: no new isolation is approved and no isolation is released while

  - more than ``decide.max_unhealthy_fraction`` of the nodes look unhealthy (stale,
    offline, or in a mesh partition), or
  - more than ``decide.max_partitioned_fraction`` sit in mesh partitions, or
  - a **correlated failure** holds: more than ``decide.max_correlated_fraction`` of the
    nodes (and at least ``decide.min_correlated_nodes``) turned unhealthy within
    ``decide.correlated_window_ticks`` ticks of each other and are still unhealthy.
    Independent failures are spread out in time; a network partition, or the
    orchestrator losing its own network, silences a whole region in the same tick.
    This engages while the silent nodes are only *stale*, before any of them is
    offline and proposed for isolation, so a silent half of the cluster is never
    isolated piecemeal at the rate limit.

  The orchestrator itself is more likely cut off than that much of the fleet broken.
  The tick report's notes say which limit and by how much. Nodes cut off from the
  orchestrator only by its *own* isolations (stranded behind an isolated node) count
  towards none of these limits;
* **strand hold**: an isolation that would cut healthy (online) nodes off from the
  orchestrator (the target is their only way in) is not applied automatically; it is
  ``suppressed`` with a note naming them;
* **partition hold**: a node in a mesh partition is not isolated for being unreachable
  (the network failed, not the node; the isolation could not even be delivered).

An action whose params the builtin effects cannot use (``wyneos_core.action_params``),
or whose target is not a node of the cluster, is ``rejected`` on its own: a lifecycle
event and an ``invalid_result`` error naming the action and the field, once per run of
proposals; the other actions of the tick go on.

**Consensus** (``wyneos_core.consensus``): a severe action (``consensus.severe_actions``,
by default isolate and revoke) against a node the orchestrator no longer hears waits,
as ``awaiting_witnesses``, until ``consensus.witnesses`` of its mesh neighbours confirm
it unreachable; the tick report's ``consensus`` section shows each one's witnesses or
what it waits for. The safety stop above stays in force regardless.

Flapping protection: the probation before a reinstate doubles with each isolation of
the same node within ``decide.flap_window_ticks`` ticks (capped at
``decide.max_probation_ticks``), so a node that keeps coming and going is held out
longer and longer instead of being isolated and reinstated every few ticks.
"""


from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wyneos_core import consensus as _consensus
from wyneos_core import hookimpl
from wyneos_core.action_params import action_problem
from wyneos_core.builtin.decide_consensus import consensus_gate, report_consensus
from wyneos_core.builtin.decide_mesh import TreeChildren, partitioned_nodes, stranded_nodes, tree_children, would_strand
from wyneos_core.builtin.decide_safety import flap_probation, licence_safety_stop, safety_reasons, trim_flap_history
from wyneos_core.builtin.decide_state import (
    ISOLATING,
    RESEND,
    RETRYABLE,
    DecideState,
    InForce,
    Probation,
    event,
    in_force_actions,
    state_of,
)
from wyneos_core.enforcement.gate import gate_of as _gate_of
from wyneos_core.enforcement.journal import journal_of as _journal_of
from wyneos_core.enforcement.overrides import OPERATOR
from wyneos_core.model import ORIGIN, Action, ActionType, NodeStatus, PluginError, Severity

if TYPE_CHECKING:
    from wyneos_core.tick import TickContext

__all__ = [
    "DecideState",
    "InForce",
    "ISOLATING",
    "Probation",
    "RESEND",
    "RETRYABLE",
    "event",
    "in_force_actions",
    "state_of",
    "would_strand",
]

#: the name ``builtin.propagate`` imports it by
_stranded = stranded_nodes

#: action types whose target must be a registered node (their effect changes that node)
_NODE_TARGETED = frozenset({
    ActionType.ISOLATE.value, ActionType.REINSTATE.value, ActionType.REDUCE_LOAD.value,
    ActionType.REDISTRIBUTE.value, ActionType.QUARANTINE.value, ActionType.GATE_FEATURE.value,
    ActionType.DEGRADE.value,
})


def _hold(ctx: TickContext, state: DecideState, action: Action, kind: str, detail: str) -> bool:
    """Report a hold of ``action`` once (True when it is new)."""
    if state.held.get(action.id) != kind:
        state.held[action.id] = kind
        event(ctx, action, kind, detail)
        return True
    return False


def _problem(action: Action, registry: Any) -> str | None:
    if action.type in _NODE_TARGETED and action.target not in registry:
        return f"target {action.target!r:.60} is not a node of the cluster"
    return action_problem(action.type, action.params)


@dataclass(slots=True)
class _Round:
    """One tick's decisions: what the checks read, and what they counted."""

    ctx: TickContext
    state: DecideState
    safety_stop: bool
    partitioned: set[str]
    stranded: set[str]
    #: new automatic isolations still allowed this tick (``decide.max_isolations_per_tick``)
    budget: int
    gate: _consensus.ConsensusState | None
    licence_stop: str | None
    #: targets of the isolations in force or approved this tick
    cut_off: set[str]
    verdicts: dict[str, _consensus.Verdict] = field(default_factory=dict)
    #: targets of the automatic isolations approved this tick (cut too when checking strands)
    approved_cuts: set[str] = field(default_factory=set)
    children: TreeChildren | None = None
    frozen: int = 0
    deferred: int = 0
    suppressed: int = 0
    strand_notes: list[str] = field(default_factory=list)

    def hold(self, action: Action, kind: str, detail: str) -> bool:
        return _hold(self.ctx, self.state, action, kind, detail)

    def new_isolation(self, action: Action) -> bool:
        """Whether ``action`` is a new automatic isolation (the limits below hold those)."""
        return action.type in ISOLATING and action.target not in self.cut_off and action.origin != OPERATOR


# -- the checks, in order: the first that returns True has dealt with the action this tick ---


def _in_force_already(r: _Round, action: Action) -> bool:
    held = r.state.in_force.get(action.id)
    if held is None:
        return False
    held.last_tick = r.ctx.tick  # its cause still holds
    return True


def _rejected(r: _Round, action: Action) -> bool:
    problem = _problem(action, r.ctx.registry)
    if problem is None:
        return False
    if r.hold(action, "rejected", problem):
        r.ctx.report.errors.append(PluginError(
            "decide", "wyneos_decide",
            f"action {action.type} for {action.target!r:.60} (origin {action.origin!r:.40}, id {action.id}) "
            f"refused: {problem}", kind="invalid_result"))
    return True


def _licence_frozen(r: _Round, action: Action) -> bool:
    if not (r.licence_stop and action.params.get("licence_reason") == r.state.licence_stopped):
        return False
    r.hold(action, "suppressed", "licence safety stop")
    r.frozen += 1
    return True


def _isolation_resumed(r: _Round, action: Action) -> bool:
    """The node is still cut off, waiting out its probation: the isolation resumes."""
    state, tick = r.state, r.ctx.tick
    if not (action.type in ISOLATING and action.target not in r.cut_off and action.target in state.probation):
        return False
    del state.probation[action.target]
    r.cut_off.add(action.target)
    state.isolations.setdefault(action.target, []).append(tick)
    state.held.pop(action.id, None)
    state.in_force[action.id] = InForce(action, tick, tick)
    event(r.ctx, action, "proposed", action.reason)
    event(r.ctx, action, "approved", "resumed: the node is still isolated (probation interrupted)")
    event(r.ctx, action, "in_force", "edges still cut")
    return True


def _awaiting_witnesses(r: _Round, action: Action) -> bool:
    """Consensus: a severe action on a silent node waits for its witnesses."""
    gate = r.gate
    if (gate is None or action.origin == OPERATOR or not gate.gates(action)
            or (action.type in ISOLATING and action.target in r.cut_off)):
        return False
    subject = gate.subject_of(action)
    mesh, registry = r.ctx.mesh, r.ctx.registry
    peers = (sum(1 for v in mesh.neighbours(subject) if v != ORIGIN)
             if subject is not None and subject in mesh else 0)
    verdict = r.verdicts[action.id] = gate.verdict(action, registry.get(subject) if subject else None,
                                                   len(registry), peers)
    if verdict.approved:
        return False
    r.hold(action, "awaiting_witnesses", verdict.detail)
    return True


def _safety_stopped(r: _Round, action: Action) -> bool:
    if not (r.safety_stop and r.new_isolation(action)):
        return False
    r.hold(action, "suppressed", "safety stop")
    r.suppressed += 1
    return True


def _partition_held(r: _Round, action: Action) -> bool:
    if not (r.new_isolation(action) and action.target in r.partitioned and action.target not in r.stranded):
        return False
    r.hold(action, "suppressed", "target is in a mesh partition")
    r.suppressed += 1
    return True


def _rate_limited(r: _Round, action: Action) -> bool:
    if not (r.budget <= 0 and r.new_isolation(action)):
        return False
    r.hold(action, "deferred", "decide.max_isolations_per_tick reached")
    r.deferred += 1
    return True


def _strand_held(r: _Round, action: Action) -> bool:
    """An isolation that would cut healthy nodes off from the orchestrator waits for an operator."""
    if not r.new_isolation(action):
        return False
    if r.children is None:
        r.children = tree_children(r.ctx)
    registry = r.ctx.registry
    cut_away = would_strand(r.ctx, action.target, r.cut_off | r.approved_cuts, r.children)
    healthy = sorted(v for v in cut_away if (n := registry.get(v)) is not None
                     and n.status is NodeStatus.ONLINE and not n.isolated)
    if not healthy:
        return False
    names = ", ".join(healthy[:5]) + (f" and {len(healthy) - 5} more" if len(healthy) > 5 else "")
    r.hold(action, "suppressed", f"would cut {len(healthy)} healthy node(s) off from the orchestrator: {names}")
    r.strand_notes.append(f"{action.target} (would strand {names})")
    r.suppressed += 1
    return True


_CHECKS = (_in_force_already, _rejected, _licence_frozen, _isolation_resumed, _awaiting_witnesses,
           _safety_stopped, _partition_held, _rate_limited, _strand_held)


def _approve(r: _Round, action: Action) -> None:
    state, tick, ctx = r.state, r.ctx.tick, r.ctx
    if r.new_isolation(action):
        r.budget -= 1
        r.approved_cuts.add(action.target)
    state.held.pop(action.id, None)
    event(ctx, action, "proposed", action.reason)
    verdict = r.verdicts.get(action.id)
    if verdict is None:
        event(ctx, action, "approved")
    else:
        event(ctx, action, "approved", f"{verdict.basis}: {verdict.detail}", witnesses=verdict.witnesses)
    state.in_force[action.id] = InForce(action, tick, tick)
    if action.type in ISOLATING and action.target not in r.cut_off:
        r.cut_off.add(action.target)
        state.probation.pop(action.target, None)
        state.isolations.setdefault(action.target, []).append(tick)


@hookimpl(trylast=True)
def wyneos_decide(ctx: TickContext, proposed: Sequence[Action]) -> list[Action]:
    state = state_of(ctx.orchestrator)
    settings = ctx.config["decide"]
    tick = ctx.tick

    unique: dict[str, Action] = {}
    for action in proposed:
        unique.setdefault(action.id, action)
    unique = _graduated(ctx, state, unique)

    partitioned = partitioned_nodes(ctx)
    stranded = stranded_nodes(ctx, partitioned)
    reasons, fraction = safety_reasons(ctx, state, settings, partitioned, stranded)
    safety_stop = bool(reasons)
    if safety_stop:
        ctx.note("safety stop: " + "; ".join(reasons) + ": automatic isolation paused "
                 "(the orchestrator itself may be cut off)")
    elif state.stopped:
        ctx.note("safety stop lifted: automatic isolation resumes")
    state.stopped = safety_stop
    if stranded:
        ctx.note(f"stranded: {len(stranded)} node(s) have no mesh path to the orchestrator only because of "
                 "isolations in force (not counted as a partition): "
                 + ", ".join(sorted(stranded)[:5]) + (" ..." if len(stranded) > 5 else ""))
    gate = consensus_gate(ctx, state)
    licence_stop = licence_safety_stop(ctx, state, settings)
    r = _Round(ctx, state, safety_stop, partitioned, stranded, settings["max_isolations_per_tick"], gate,
               licence_stop, {h.action.target for h in state.in_force.values() if h.action.type in ISOLATING})

    decided: list[Action] = []
    for action in unique.values():
        if not any(check(r, action) for check in _CHECKS):
            _approve(r, action)
            decided.append(action)
    if r.deferred:
        ctx.note(f"rate limit: {r.deferred} isolation(s) deferred to the next tick "
                 f"(decide.max_isolations_per_tick={settings['max_isolations_per_tick']})")
    if r.strand_notes:
        ctx.note("strand hold: isolation not applied automatically, the target is the only way in for healthy "
                 "nodes: " + "; ".join(r.strand_notes[:5]) + (" ..." if len(r.strand_notes) > 5 else ""))
    partition_holds = r.suppressed - len(r.strand_notes)
    if partition_holds and not safety_stop:
        ctx.note(f"partition hold: {partition_holds} isolation(s) of nodes in a mesh partition not approved")
    # holds whose cause went away are forgotten, so a new hold is reported again
    for action_id in [a for a in state.held if a not in unique]:
        del state.held[action_id]

    if gate is not None:
        report_consensus(ctx, gate, r.verdicts, unique)

    if r.frozen:
        ctx.note(f"licence safety stop: {r.frozen} licence action(s) not approved")
    _clear(ctx, state, settings, safety_stop, partitioned - stranded, licence_stop is not None)
    decided.extend(_reinstate(ctx, state, settings))
    if tick % 100 == 0:
        trim_flap_history(state, tick, settings)
    ctx.scratch["decide"] = {
        "in_force": len(state.in_force),
        "safety_stop": safety_stop,
        "safety_reasons": reasons,
        "unhealthy_fraction": round(fraction, 4),
        "partitioned": partitioned - stranded,
        "stranded": stranded,
        "deferred": r.deferred,
        "suppressed": r.suppressed,
        "licence_stop": licence_stop,
    }
    _journal_of(ctx.orchestrator).record(ctx, _gate_of(ctx.orchestrator), decided)
    if gate is not None:
        ctx.scratch["consensus"] = {"discounted": set(gate.discounted),
                                    "waiting": {unique[i].target for i, v in r.verdicts.items() if not v.approved}}
    return decided


def _graduated(ctx: TickContext, state: DecideState, unique: dict[str, Action]) -> dict[str, Action]:
    """Overrides, modes, exceptions and disruption budgets (``wyneos_core.enforcement.gate``)."""
    from wyneos_core.builtin.rulesets import runner_of

    gate = _gate_of(ctx.orchestrator)
    runner = runner_of(ctx.orchestrator.pm)
    gate.learn_rulesets(runner.rulesets() if runner is not None else [])
    return gate.screen(ctx, unique, state.in_force, event)


def _clear(ctx: TickContext, state: DecideState, settings: dict[str, Any], safety_stop: bool,
           partitioned: set[str], licence_frozen: bool = False) -> None:
    tick = ctx.tick
    keep = settings["keep_firing_ticks"]
    for action_id, held in list(state.in_force.items()):
        if held.last_tick == tick or tick - held.last_tick <= keep:
            continue
        action = held.action
        if action.type in ISOLATING and (safety_stop or action.target in partitioned):
            continue  # do not release isolations on evidence we distrust
        if licence_frozen and "licence_reason" in action.params:
            continue  # nor licence actions while the licence step itself cannot be trusted
        del state.in_force[action_id]
        event(ctx, action, "cleared", f"cause resolved {tick - held.last_tick} tick(s) ago")
        still_isolated = any(h.action.target == action.target and h.action.type in ISOLATING
                             for h in state.in_force.values())
        if action.type in ISOLATING and action.target in ctx.registry and not still_isolated:
            required = flap_probation(state, action.target, tick, settings)
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
