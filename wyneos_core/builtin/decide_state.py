"""What the builtin decide step remembers across ticks: the actions in force, nodes on
probation, flap history and holds (``DecideState``), restored from the store the first
time it is asked for, and the lifecycle events the step and ``propagate`` report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wyneos_core.model import Action, ActionType, Severity

if TYPE_CHECKING:
    from wyneos_core.tick import Orchestrator, TickContext

__all__ = ["DecideState", "InForce", "ISOLATING", "Probation", "RESEND", "RETRYABLE", "event", "in_force_actions",
           "state_of"]

ISOLATING = frozenset({ActionType.ISOLATE.value})
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


def in_force_actions(orchestrator: Orchestrator) -> list[dict[str, Any]]:
    """Every action in force, as dicts with ``first_tick``, ``last_tick`` and ``pending``."""
    state = state_of(orchestrator)
    return [
        {**held.action.to_dict(), "first_tick": held.first_tick, "last_tick": held.last_tick,
         "pending": dict(held.pending)}
        for held in state.in_force.values()
    ]
