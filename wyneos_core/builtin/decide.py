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

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from wyneos_core import consensus as _consensus
from wyneos_core.enforcement.gate import gate_of as _gate_of
from wyneos_core.enforcement.journal import journal_of as _journal_of
from wyneos_core.enforcement.overrides import OPERATOR
from wyneos_core import hookimpl
from wyneos_core.action_params import action_problem
from wyneos_core.mesh import ArrayParents
from wyneos_core.nodetable import STATUS_CODE
from wyneos_core.model import ORIGIN, Action, ActionType, NodeStatus, PluginError, Severity
from wyneos_core.wording import plural

if TYPE_CHECKING:
    from wyneos_core.tick import Orchestrator, TickContext

__all__ = [
    "DecideState",
    "InForce",
    "ISOLATING",
    "Probation",
    "event",
    "in_force_actions",
    "state_of",
    "would_strand",
]

ISOLATING = frozenset({ActionType.ISOLATE.value})
_UNHEALTHY = (NodeStatus.OFFLINE, NodeStatus.STALE)
_UNHEALTHY_CODES = [STATUS_CODE[s] for s in _UNHEALTHY]
#: action types whose target must be a registered node (their effect changes that node)
_NODE_TARGETED = frozenset({
    ActionType.ISOLATE.value, ActionType.REINSTATE.value, ActionType.REDUCE_LOAD.value,
    ActionType.REDISTRIBUTE.value, ActionType.QUARANTINE.value, ActionType.GATE_FEATURE.value,
    ActionType.DEGRADE.value,
})
#: undelivered reasons worth another try in a later tick
RETRYABLE = frozenset({"offline", "partition", "relay_failed"})
#: pending marker of an action restored without its delivery record: carry it to all targets again
RESEND = "*"


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
    #: action id -> "deferred" | "suppressed" | "rejected", to report a hold once rather than every tick
    held: dict[str, str] = field(default_factory=dict)
    #: whether a safety stop was on in the previous tick
    stopped: bool = False
    #: nodes whose ``metadata["restrictions"]`` the orchestrator maintains
    restricted: set[str] = field(default_factory=set)
    #: node id -> first tick of its current run of stale/offline ticks (correlated failures)
    unhealthy_since: dict[str, int] = field(default_factory=dict)
    #: the reason code of the licence safety stop of the previous tick ("" when off)
    licence_stopped: str = ""


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
    _restore_deliveries(state, store)
    window = orchestrator.config["decide"]["flap_window_ticks"]
    kinds = {row["id"]: row for row in store.actions()}
    for ev in store.action_events(since_tick=max(0, tick - window)):
        row = kinds.get(ev["action_id"])
        if row is not None and row["type"] in ISOLATING and ev["state"] == "approved":
            state.isolations.setdefault(row["target"], []).append(ev["tick"])
    isolated_by_action = {h.action.target for h in state.in_force.values() if h.action.type in ISOLATING}
    probation = orchestrator.config["decide"]["probation_ticks"]
    for node_id in orchestrator.registry.isolated_ids():
        if node_id not in isolated_by_action:
            state.probation[node_id] = Probation(tick, probation)


def _restore_deliveries(state: DecideState, store: Any) -> None:
    """Pending targets and carried params of the actions in force, from the store.

    An action in force with no stored delivery outcome at all (the orchestrator stopped
    between approving it and recording its deliveries) is carried again, to every
    target, in the next tick.
    """
    reader = getattr(store, "action_outcomes", None)
    if reader is None or not state.in_force:
        return
    outcomes, carried = reader(list(state.in_force))
    for action_id, held in state.in_force.items():
        rows = outcomes.get(action_id)
        params = carried.get(action_id)
        if params is not None:
            a = held.action
            held.carried = Action(a.type, a.target, a.reason, a.origin, a.severity, params, id=a.id)
        if rows is None:
            held.pending = {RESEND: "restart"}  # marker: carry again to all its targets
            continue
        held.pending = {t: r for t, (ok, r) in rows.items() if not ok and r in RETRYABLE}


# -- what the mesh says --------------------------------------------------------------------


def _partitioned(ctx: TickContext) -> set[str]:
    mesh = ctx.mesh
    reach = ctx.mesh_tree().parent
    isolated = mesh.isolated
    registry = ctx.registry
    if isinstance(reach, ArrayParents):  # the few vertices without a path, from the arrays
        return {v for v in reach.unreached() if v not in isolated and v in registry}
    return {n.id for n in registry if n.id not in reach and n.id not in isolated and n.id in mesh}


def _stranded(ctx: TickContext, partitioned: set[str]) -> set[str]:
    """The nodes of ``partitioned`` that only the orchestrator's own isolations cut off:
    they would have a mesh path again if the isolated nodes' edges were back."""
    if not partitioned or not ctx.mesh.isolated:
        return set()
    return partitioned & ctx.mesh.reachable_if_reinstated()


def would_strand(ctx: TickContext, target: str, blocked: set[str], children: Any) -> list[str]:
    """The vertices that cutting ``target`` (with ``blocked`` cut too) would leave without
    a mesh path to the orchestrator.

    Searches outward from ``target``'s children in the tick's structural tree and stops
    at the first vertex whose tree path avoids ``target`` and ``blocked`` (a way in),
    so on a well-meshed cluster it looks at a handful of vertices.

    :param children: the structural tree's children by parent (see ``_children``).
    """
    parent = ctx.mesh_tree().parent
    neighbours = ctx.mesh.neighbours
    cut = blocked | {target}

    def way_in(v: str) -> bool:
        while v != ORIGIN:
            if v in cut:
                return False
            nxt = parent.get(v)
            if nxt is None:
                return False
            v = nxt
        return True

    escaped: set[str] = set()
    stranded: list[str] = []
    for child in children.get(target, ()):
        if child in escaped or child in cut:
            continue
        seen = {child}
        frontier = [child]
        ok = False
        while frontier and not ok:
            nxt = []
            for v in frontier:
                for w in neighbours(v):
                    if w in seen or w in cut:
                        continue
                    if w in escaped or way_in(w):
                        ok = True
                        break
                    seen.add(w)
                    nxt.append(w)
                if ok:
                    break
            frontier = nxt
        if ok:
            escaped |= seen
        else:
            stranded.extend(seen)
    return stranded


class _Children:
    """The structural tree's children by parent, found when asked (``get``)."""

    __slots__ = ("parent", "_by_parent")

    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self._by_parent: dict[str, list[str]] | None = None

    def get(self, vertex: str, default: Any = ()) -> Any:
        if isinstance(self.parent, ArrayParents):
            return self.parent.children(vertex) or default
        if self._by_parent is None:
            self._by_parent = {}
            for v, p in self.parent.items():
                self._by_parent.setdefault(p, []).append(v)
        return self._by_parent.get(vertex, default)


def _children(ctx: TickContext) -> _Children:
    return _Children(ctx.mesh_tree().parent)


def _correlated(state: DecideState, window: int) -> tuple[int, int]:
    """Largest number of still-unhealthy nodes that turned unhealthy within ``window``
    ticks of each other, and the first tick of that span."""
    counts = Counter(state.unhealthy_since.values())
    if not counts:
        return 0, 0
    ticks = sorted(counts)
    best = best_start = 0
    total = 0
    lo = 0
    for hi, t in enumerate(ticks):
        total += counts[t]
        while t - ticks[lo] >= window:
            total -= counts[ticks[lo]]
            lo += 1
        if total > best:
            best, best_start = total, ticks[lo]
    return best, best_start


def _flap_probation(state: DecideState, node_id: str, tick: int, settings: dict[str, Any]) -> int:
    history = state.isolations.get(node_id, [])
    recent = [t for t in history if tick - t <= settings["flap_window_ticks"]]
    state.isolations[node_id] = recent
    base = settings["probation_ticks"]
    if len(recent) <= 1:
        return base
    return min(settings["max_probation_ticks"], max(base, 1) * 2 ** (len(recent) - 1))


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


def _safety(ctx: TickContext, state: DecideState, settings: dict[str, Any], partitioned: set[str],
            stranded: set[str]) -> tuple[list[str], float]:
    """Why automatic isolation must stop this tick (empty: it need not), and the
    unhealthy fraction."""
    tick = ctx.tick
    total = len(ctx.registry)
    since = state.unhealthy_since
    table = ctx.registry.table  # stale or offline, from the status column, in slot order
    slots = table.slots()
    status = table.status[slots]
    ids = table.ids
    sick_ids = [ids[s] for s in slots[np.isin(status, _UNHEALTHY_CODES)].tolist()]
    sick = set(sick_ids)
    unhealthy = len(sick)
    for node_id in [k for k in since if k not in sick]:
        del since[node_id]
    for node_id in sick_ids:
        if node_id not in since:
            since[node_id] = tick
    unhealthy += sum(1 for node_id in partitioned if node_id not in sick and node_id not in stranded
                     and node_id in ctx.registry)
    cut = len(partitioned) - len(stranded & partitioned)
    reasons: list[str] = []
    if not total:
        return reasons, 0.0
    fraction = unhealthy / total
    if fraction > settings["max_unhealthy_fraction"]:
        reasons.append(f"{unhealthy}/{total} nodes ({fraction:.0%}) look unhealthy, more than "
                       f"decide.max_unhealthy_fraction={settings['max_unhealthy_fraction']:g}")
    if cut / total > settings["max_partitioned_fraction"]:
        reasons.append(f"{cut}/{total} nodes ({cut / total:.0%}) have no mesh path to the "
                       f"orchestrator, more than decide.max_partitioned_fraction="
                       f"{settings['max_partitioned_fraction']:g}")
    window = settings["correlated_window_ticks"]
    group, start = _correlated(state, window)
    if group >= settings["min_correlated_nodes"] and group / total > settings["max_correlated_fraction"]:
        reasons.append(f"{group}/{total} nodes ({group / total:.0%}) went silent within {window} tick(s) of "
                       f"each other (from tick {start}) and are still silent, more than "
                       f"decide.max_correlated_fraction={settings['max_correlated_fraction']:g}: a partition or "
                       "an outage on the orchestrator's side is likelier than that many failures at once")
    return reasons, fraction


@hookimpl(trylast=True)
def wyneos_decide(ctx: TickContext, proposed: Sequence[Action]) -> list[Action]:
    state = state_of(ctx.orchestrator)
    settings = ctx.config["decide"]
    tick = ctx.tick
    registry = ctx.registry

    unique: dict[str, Action] = {}
    for action in proposed:
        unique.setdefault(action.id, action)
    unique = _graduated(ctx, state, unique)

    partitioned = _partitioned(ctx)
    stranded = _stranded(ctx, partitioned)
    reasons, fraction = _safety(ctx, state, settings, partitioned, stranded)
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
    budget = settings["max_isolations_per_tick"]
    gate = _consensus_gate(ctx, state)
    verdicts: dict[str, _consensus.Verdict] = {}
    licence_stop = _licence_stop(ctx, state, settings)
    frozen = 0

    decided: list[Action] = []
    deferred = suppressed = 0
    strand_notes: list[str] = []
    children: _Children | None = None
    approved_cuts: set[str] = set()
    cut_off = {h.action.target for h in state.in_force.values() if h.action.type in ISOLATING}
    for action in unique.values():
        manual = action.origin == OPERATOR  # an operator override: no automatic limit holds it
        held = state.in_force.get(action.id)
        if held is not None:
            held.last_tick = tick
            continue
        problem = _problem(action, registry)
        if problem is not None:
            if _hold(ctx, state, action, "rejected", problem):
                ctx.report.errors.append(PluginError(
                    "decide", "wyneos_decide",
                    f"action {action.type} for {action.target!r:.60} (origin {action.origin!r:.40}, id {action.id}) "
                    f"refused: {problem}", kind="invalid_result"))
            continue
        if licence_stop and action.params.get("licence_reason") == state.licence_stopped:
            _hold(ctx, state, action, "suppressed", "licence safety stop")
            frozen += 1
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
        # -- consensus: a severe action on a silent node waits for its witnesses ----------------
        if gate is not None and not manual and gate.gates(action) and not (action.type in ISOLATING and action.target in cut_off):
            subject = gate.subject_of(action)
            mesh = ctx.mesh
            peers = (sum(1 for v in mesh.neighbours(subject) if v != ORIGIN)
                     if subject is not None and subject in mesh else 0)
            verdict = verdicts[action.id] = gate.verdict(action, registry.get(subject) if subject else None,
                                                         len(registry), peers)
            if not verdict.approved:
                _hold(ctx, state, action, "awaiting_witnesses", verdict.detail)
                continue
        # -- end of consensus ---------------------------------------------------------------------
        if action.type in ISOLATING and action.target not in cut_off and not manual:
            if safety_stop:
                _hold(ctx, state, action, "suppressed", "safety stop")
                suppressed += 1
                continue
            if action.target in partitioned and action.target not in stranded:
                _hold(ctx, state, action, "suppressed", "target is in a mesh partition")
                suppressed += 1
                continue
            if budget <= 0:
                _hold(ctx, state, action, "deferred", "decide.max_isolations_per_tick reached")
                deferred += 1
                continue
            if children is None:
                children = _children(ctx)
            cut_away = would_strand(ctx, action.target, cut_off | approved_cuts, children)
            healthy = sorted(v for v in cut_away if (n := registry.get(v)) is not None
                             and n.status is NodeStatus.ONLINE and not n.isolated)
            if healthy:
                names = ", ".join(healthy[:5]) + (f" and {len(healthy) - 5} more" if len(healthy) > 5 else "")
                _hold(ctx, state, action, "suppressed",
                      f"would cut {len(healthy)} healthy node(s) off from the orchestrator: {names}")
                strand_notes.append(f"{action.target} (would strand {names})")
                suppressed += 1
                continue
            budget -= 1
            approved_cuts.add(action.target)
        state.held.pop(action.id, None)
        event(ctx, action, "proposed", action.reason)
        verdict = verdicts.get(action.id)
        if verdict is None:
            event(ctx, action, "approved")
        else:
            event(ctx, action, "approved", f"{verdict.basis}: {verdict.detail}", witnesses=verdict.witnesses)
        state.in_force[action.id] = InForce(action, tick, tick)
        decided.append(action)
        if action.type in ISOLATING and action.target not in cut_off:
            cut_off.add(action.target)
            state.probation.pop(action.target, None)
            state.isolations.setdefault(action.target, []).append(tick)
    if deferred:
        ctx.note(f"rate limit: {deferred} isolation(s) deferred to the next tick "
                 f"(decide.max_isolations_per_tick={settings['max_isolations_per_tick']})")
    if strand_notes:
        ctx.note("strand hold: isolation not applied automatically, the target is the only way in for healthy "
                 "nodes: " + "; ".join(strand_notes[:5]) + (" ..." if len(strand_notes) > 5 else ""))
    partition_holds = suppressed - len(strand_notes)
    if partition_holds and not safety_stop:
        ctx.note(f"partition hold: {partition_holds} isolation(s) of nodes in a mesh partition not approved")
    # holds whose cause went away are forgotten, so a new hold is reported again
    for action_id in [a for a in state.held if a not in unique]:
        del state.held[action_id]

    if gate is not None:
        _consensus_report(ctx, gate, verdicts, unique)

    if frozen:
        ctx.note(f"licence safety stop: {frozen} licence action(s) not approved")
    _clear(ctx, state, settings, safety_stop, partitioned - stranded, licence_stop is not None)
    decided.extend(_reinstate(ctx, state, settings))
    if tick % 100 == 0:
        _trim(state, tick, settings)
    ctx.scratch["decide"] = {
        "in_force": len(state.in_force),
        "safety_stop": safety_stop,
        "safety_reasons": reasons,
        "unhealthy_fraction": round(fraction, 4),
        "partitioned": partitioned - stranded,
        "stranded": stranded,
        "deferred": deferred,
        "suppressed": suppressed,
        "licence_stop": licence_stop,
    }
    _journal_of(ctx.orchestrator).record(ctx, _gate_of(ctx.orchestrator), decided)
    if gate is not None:
        ctx.scratch["consensus"] = {"discounted": set(gate.discounted),
                                    "waiting": {unique[i].target for i, v in verdicts.items() if not v.approved}}
    return decided


def _graduated(ctx: TickContext, state: DecideState, unique: dict[str, Action]) -> dict[str, Action]:
    """Overrides, modes, exceptions and disruption budgets (``wyneos_core.enforcement.gate``)."""
    from wyneos_core.builtin.rulesets import runner_of

    gate = _gate_of(ctx.orchestrator)
    runner = runner_of(ctx.orchestrator.pm)
    gate.learn_rulesets(runner.rulesets() if runner is not None else [])
    return gate.screen(ctx, unique, state.in_force, event)


def _consensus_gate(ctx: TickContext, state: DecideState) -> _consensus.ConsensusState | None:
    """The tick's consensus bookkeeping (witness observations in, suspects followed).

    Suspects are the nodes the orchestrator no longer hears (``state.unhealthy_since``,
    kept by ``_safety``); isolated ones are already cut off and left out.
    """
    gate = _consensus.state_of(ctx.orchestrator)
    registry = ctx.registry
    silent = {n: t for n, t in state.unhealthy_since.items() if (node := registry.get(n)) is not None
              and not node.isolated}
    weights = ctx.scratch.get("witness_weights")
    refused = {r.get("node_id") for r in ctx.report.heartbeats_rejected if isinstance(r, dict)}
    gate.update(ctx.tick, ctx.now, ctx.observations, registry, silent,
                float(ctx.config["heartbeat"]["interval"]), weights if isinstance(weights, dict) else None,
                (n for n in refused if isinstance(n, str) and n in registry))
    return gate


def _consensus_report(ctx: TickContext, gate: _consensus.ConsensusState, verdicts: dict[str, _consensus.Verdict],
                      unique: dict[str, Action]) -> None:
    """The report's ``consensus`` section: every severe action decided on this tick with
    its witnesses or what it waits for."""
    listed = []
    waiting = 0
    for action_id, verdict in verdicts.items():
        if not verdict.approved:
            waiting += 1
        if len(listed) < _consensus.REPORT_LIMIT:
            listed.append(verdict.to_dict(unique[action_id]))
    ctx.report.consensus = {**gate.summary(), "actions": listed, "waiting": waiting,
                            "actions_omitted": max(0, len(verdicts) - len(listed))}
    if waiting:
        ctx.note(f"consensus: {plural(waiting, 'severe action')} {'waits' if waiting == 1 else 'wait'} for witness "
                 "confirmation "
                 f"(consensus.witnesses={gate.settings.witnesses})")


def _trim(state: DecideState, tick: int, settings: dict[str, Any]) -> None:
    """Forget flap history older than the window (nodes that stopped flapping long ago)."""
    window = settings["flap_window_ticks"]
    for node_id in [n for n, ticks in state.isolations.items() if not ticks or tick - ticks[-1] > window]:
        del state.isolations[node_id]


def _licence_stop(ctx: TickContext, state: DecideState, settings: dict[str, Any]) -> str | None:
    """The licence safety stop: why licence actions are frozen this tick (None: they are not).

    When every licensed node fails for one orchestrator-side reason (``fleet_fault``) the
    orchestrator does not punish the fleet for its own fault: no new action for that
    ``licence_reason`` is approved and no licence action in force is cleared. Said as an
    error of kind ``licence_safety_stop`` every tick it holds (and a note when it lifts).
    """
    from wyneos_core.builtin.licence import fleet_fault

    fault = fleet_fault(ctx.report.licences, settings["licence_stop_min_nodes"])
    if fault is None:
        if state.licence_stopped:
            ctx.note(f"licence safety stop lifted ({state.licence_stopped} no longer fails every node): "
                     "licence actions resume")
        state.licence_stopped = ""
        return None
    code, why = fault
    state.licence_stopped = code
    text = (f"licence safety stop: {why}; licence actions frozen (none for {code} approved, "
            "none in force cleared)")
    ctx.report.errors.append(PluginError("decide", "wyneos_decide", text, kind="licence_safety_stop"))
    return text


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
