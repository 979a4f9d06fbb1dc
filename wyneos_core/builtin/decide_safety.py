"""The builtin decide step's safety limits: the safety stop (unhealthy, partitioned and
correlated fractions), the licence safety stop, and the probation of a flapping node
(the module docstring of ``wyneos_core.builtin.decide`` explains each)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from wyneos_core.builtin.decide_state import DecideState
from wyneos_core.model import NodeStatus, PluginError
from wyneos_core.nodetable import STATUS_CODE

if TYPE_CHECKING:
    from wyneos_core.tick import TickContext

__all__ = ["flap_probation", "licence_safety_stop", "safety_reasons", "trim_flap_history"]

_UNHEALTHY = (NodeStatus.OFFLINE, NodeStatus.STALE)
_UNHEALTHY_CODES = [STATUS_CODE[s] for s in _UNHEALTHY]


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


def flap_probation(state: DecideState, node_id: str, tick: int, settings: dict[str, Any]) -> int:
    history = state.isolations.get(node_id, [])
    recent = [t for t in history if tick - t <= settings["flap_window_ticks"]]
    state.isolations[node_id] = recent
    base = settings["probation_ticks"]
    if len(recent) <= 1:
        return base
    return min(settings["max_probation_ticks"], max(base, 1) * 2 ** (len(recent) - 1))


def safety_reasons(ctx: TickContext, state: DecideState, settings: dict[str, Any], partitioned: set[str],
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


def trim_flap_history(state: DecideState, tick: int, settings: dict[str, Any]) -> None:
    """Forget flap history older than the window (nodes that stopped flapping long ago)."""
    window = settings["flap_window_ticks"]
    for node_id in [n for n, ticks in state.isolations.items() if not ticks or tick - ticks[-1] > window]:
        del state.isolations[node_id]


def licence_safety_stop(ctx: TickContext, state: DecideState, settings: dict[str, Any]) -> str | None:
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
