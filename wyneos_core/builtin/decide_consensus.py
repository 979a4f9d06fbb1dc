"""Consensus in the builtin decide step (``wyneos_core.consensus``): the tick's witness
bookkeeping, and the report's ``consensus`` section."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wyneos_core import consensus as _consensus
from wyneos_core.builtin.decide_state import DecideState
from wyneos_core.model import Action
from wyneos_core.wording import plural

if TYPE_CHECKING:
    from wyneos_core.tick import TickContext

__all__ = ["consensus_gate", "report_consensus"]


def consensus_gate(ctx: TickContext, state: DecideState) -> _consensus.ConsensusState | None:
    """The tick's consensus bookkeeping (witness observations in, suspects followed).

    Suspects are the nodes the orchestrator no longer hears (``state.unhealthy_since``,
    kept by ``decide_safety.safety_reasons``); isolated ones are already cut off and left out.
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


def report_consensus(ctx: TickContext, gate: _consensus.ConsensusState, verdicts: dict[str, _consensus.Verdict],
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
