"""Builtin state persistence: each tick's decisions and lifecycle into the SQLite store.

Written in one transaction per tick: the tick summary, every action lifecycle event,
the actions table (in force / cleared), and the nodes whose status, isolation or
membership changed (heartbeat times are soft state: after a restart they are refreshed
by the next heartbeats).
"""

from __future__ import annotations

from wyneos_core import hookimpl
from wyneos_core.builtin.decide import state_of
from wyneos_core.model import TickReport, licence_summary
from wyneos_core.tick import TickContext


@hookimpl
def wyneos_tick_report(ctx: TickContext, report: TickReport) -> None:
    store = ctx.store
    if store is None:
        return
    decide = state_of(ctx.orchestrator)
    touched: dict[str, str] = {}
    for event in report.lifecycle:
        touched[event["action_id"]] = event["state"]
    rows = []
    cleared: list[str] = []
    for action_id, held in decide.in_force.items():
        if action_id in touched or held.first_tick == ctx.tick:
            rows.append({**held.action.to_dict(), "state": "in_force",
                         "first_tick": held.first_tick, "last_tick": held.last_tick})
    known = {a.id: a for a in report.proposed}
    known.update({a.id: a for a in report.actions})
    for action_id, state in touched.items():
        if action_id in decide.in_force:
            continue
        action = known.get(action_id)
        if action is not None:
            rows.append({**action.to_dict(), "state": state, "first_tick": ctx.tick, "last_tick": ctx.tick})
        elif state == "cleared":
            cleared.append(action_id)
    changed = {t["node_id"] for t in report.transitions if t.get("kind") == "status"}
    changed.update(a.target for a in report.actions)
    first = ctx.tick == 1 or not getattr(ctx.orchestrator, "_state_primed", False)
    nodes = report.nodes if first else [n for n in report.nodes if n.id in changed]
    ctx.orchestrator._state_primed = True  # type: ignore[attr-defined]
    summary = {
        "tick": report.tick,
        "started_at": report.started_at,
        "duration_ms": round(report.duration_ms, 3),
        "status_counts": report.status_counts(),
        "rule_summary": report.rule_summary,
        "licence_summary": licence_summary(report.licences.values()),
        "actions": [a.to_dict() for a in report.actions],
        "errors": [e.to_dict() for e in report.errors],
        "notes": report.notes,
    }
    store.write_tick(
        report.tick, report.started_at, report.duration_ms, summary, nodes, rows,
        ((e["action_id"], e["state"], e.get("detail", "")) for e in report.lifecycle),
        ctx.config["state"]["retention_ticks"],
        cleared=cleared,
    )
