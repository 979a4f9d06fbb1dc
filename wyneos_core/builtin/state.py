"""Builtin state persistence: each tick's decisions and lifecycle into the SQLite store.

Written in one transaction per tick: the tick summary, every action lifecycle event,
the actions table (in force / cleared), and the nodes whose status, isolation or
membership changed (heartbeat times are soft state: after a restart they are refreshed
by the next heartbeats).

Before it, in a transaction of its own, the per-target outcome of every delivery of the
tick (``action_targets``: delivered, or the reason it was not) and what each action
carried and did (``action_effects``: the params as carried, with the planned load
moves; the edges an isolation cut or a reinstatement restored). After a restart the
decide step rebuilds each action in force with its targets still pending and its
carried params, so redelivery carries on where it stopped. Written first on purpose: a
crash between the two transactions leaves outcomes of actions the store does not know
(ignored), never actions in force without their outcomes (those would be carried
again to every target).

A write that fails (the disk is full) does not lose the tick: it waits in memory and
is written, in order, before the next tick's, at every tick until the disk has room
(``orchestrator.state_error`` says why meanwhile; ``/healthz`` reports it).
"""

from __future__ import annotations

import sqlite3
from collections import deque
from typing import TYPE_CHECKING, Any

from wyneos_core import hookimpl
from wyneos_core.builtin.decide import DecideState, state_of
from wyneos_core.builtin.listing import licence_summary, listed, rows_changed
from wyneos_core.model import TickReport
from wyneos_core.store import StoreError
from wyneos_core.transitions import status_ids

if TYPE_CHECKING:
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
    first = ctx.tick == 1 or not getattr(ctx.orchestrator, "_state_primed", False)
    # the nodes whose row changed, found through the registry's index (not a walk over the fleet):
    # status changes, and the targets of new actions whose stored fields changed since the
    # tick before (an isolation; not a load reduction); every node the first time, a chunk
    # at a time from the report's column copy
    wanted = None
    if not first:
        wanted = set(status_ids(report.transitions))
        targets = {a.target for a in report.actions} - wanted
        wanted |= rows_changed(report.nodes, ctx.orchestrator.last_report, ctx.registry, targets)
    nodes = listed(report.nodes, ctx.registry, wanted)
    ctx.orchestrator._state_primed = True  # type: ignore[attr-defined]
    summary = {
        "tick": report.tick,
        "started_at": report.started_at,
        "duration_ms": round(report.duration_ms, 3),
        "status_counts": report.status_counts(),
        "rule_summary": report.rule_summary,
        "licence_summary": licence_summary(report),
        "actions": [a.to_dict() for a in report.actions],
        "errors": [e.to_dict() for e in report.errors],
        "notes": report.notes,
    }
    entry = (_outcomes(ctx, report, decide), (
        report.tick, report.started_at, report.duration_ms, summary, nodes, rows,
        [(e["action_id"], e["state"], e.get("detail", "")) for e in report.lifecycle],
        ctx.config["state"]["retention_ticks"], cleared))
    _write(ctx, report, decide, entry)


#: ticks kept in memory while the state file cannot be written; past it, the oldest are
#: dropped and the first write that works rewrites every action in force and every node
MAX_BACKLOG = 1000


def _write(ctx: TickContext, report: TickReport, decide: DecideState, entry: tuple) -> None:
    """Write this tick, after any ticks a failed write left waiting (in order, each in
    its own transactions, exactly as they would have been written on time).

    A write that fails (disk full, I/O error, locked) is retried at every tick until
    it works: nothing decided meanwhile is lost once the disk has room. While writes
    fail, ``orchestrator.state_error`` names the cause (``/healthz`` reports it).
    """
    orch = ctx.orchestrator
    store = ctx.store
    assert store is not None
    backlog: deque[tuple] = getattr(orch, "_state_backlog", None) or deque()
    orch._state_backlog = backlog  # type: ignore[attr-defined]
    backlog.append(entry)
    if len(backlog) > MAX_BACKLOG:
        backlog.clear()
        backlog.append(_full_entry(ctx, report, decide, entry))
    try:
        while backlog:
            outcomes, tick_args = backlog[0]
            if outcomes is not None:
                store.write_action_outcomes(*outcomes)
            store.write_tick(*tick_args)
            backlog.popleft()
    except (sqlite3.Error, OSError) as exc:
        _keep(backlog)
        orch.state_error = (f"state file not written: {exc} ({len(backlog)} tick(s) kept in memory, "  # type: ignore[attr-defined]
                            f"retried at every tick)")
        raise StoreError(f"{store.path}: {orch.state_error}") from None
    orch.state_error = None  # type: ignore[attr-defined]


def _keep(backlog: deque[tuple]) -> None:
    """Make the waiting ticks' node lists plain lists of ``Node`` values: a list over a
    tick's column copy would keep the whole copy alive while the disk stays full."""
    for k, (outcomes, tick_args) in enumerate(backlog):
        if not isinstance(tick_args[4], list):
            backlog[k] = (outcomes, (*tick_args[:4], list(tick_args[4]), *tick_args[5:]))


def _full_entry(ctx: TickContext, report: TickReport, decide: DecideState, entry: tuple) -> tuple:
    """This tick's write, widened to every node and every action in force (and every
    stored action in force that no longer is, cleared): for when the backlog overflowed."""
    store = ctx.store
    assert store is not None
    outcomes, (tick, started, duration, summary, _nodes, rows, events, retention, cleared) = entry
    ids = {r["id"] for r in rows}
    rows = rows + [{**held.action.to_dict(), "state": "in_force", "first_tick": held.first_tick,
                    "last_tick": held.last_tick} for aid, held in decide.in_force.items() if aid not in ids]
    try:
        stored = {a["id"] for a in store.actions("in_force")}
    except sqlite3.Error:
        stored = set()
    cleared = sorted(set(cleared) | (stored - set(decide.in_force)))
    return outcomes, (tick, started, duration, summary, listed(report.nodes, ctx.registry), rows, events, retention,
                      cleared)


def _outcomes(ctx: TickContext, report: TickReport, decide: DecideState) -> tuple | None:
    """The arguments of this tick's ``write_action_outcomes`` (None: nothing to write)."""
    effects: dict[str, list[Any]] = {}
    for e in report.lifecycle:
        if e["state"] == "propagated":
            held = decide.in_force.get(e["action_id"])
            if held is not None and held.carried is not None:
                effects.setdefault(e["action_id"], [None, None])[0] = held.carried.params
        elif "effect" in e and e["state"] in ("in_force", "restored"):
            effects.setdefault(e["action_id"], [None, None])[1] = e["effect"]
    if not report.deliveries and not effects:
        return None
    return (report.tick, [(d.action_id, d.target, d.delivered, d.reason) for d in report.deliveries],
            [(a, p, e) for a, (p, e) in effects.items()], ctx.config["state"]["retention_ticks"])
