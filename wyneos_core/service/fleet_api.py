"""Read routes for operators at fleet scale (``wyneos get``, the dashboard):

* ``GET /v1/fleet/nodes``: nodes filtered by label ``selector``, ``problem`` and search
  text ``q``, sorted (``sort``), one page (``limit``, ``offset``);
* ``GET /v1/fleet/summary``: counts by status, zone and tier, nodes per problem;
* ``GET /v1/fleet/tick``: the last tick in brief (the dashboard's headline);
* ``GET /v1/fleet/history``: the last committed ticks as the dashboard charts them;
* ``GET /v1/mesh/around/{id}``: the mesh within ``depth`` hops of one node;
* ``GET /v1/nodes/{id}/explain``: why the node is as it is (``wyneos explain --server``);
* ``GET /v1/enrol/tokens``: enrolment tokens (never the token: its hash's first 12
  characters, the node it is for, uses left, expiry).

All read the published view or the committed state (never waiting for a tick in flight,
except the explanation, which waits for it in a worker thread; the mesh is read beside
it and read again when the tick changed it meanwhile), and need the operator token when
one is set. See docs/operations.md.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from wyneos_core.selectors import SelectorError, parse
from wyneos_core.service.fleet import SORT_KEYS, FleetIndex, history, neighbourhood

__all__ = ["add_fleet_routes"]


def _error(status: int, code: str, error: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"status": status, "code": code, "error": error, **extra}, status_code=status)


class _PerView:
    """The ``FleetIndex`` of the service's current view, built once per view."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self._last: tuple[Any, FleetIndex | None] = (None, None)

    def __call__(self) -> FleetIndex:
        view = self.service.view
        last, index = self._last
        if last is view and index is not None:
            return index
        index = FleetIndex(view.nodes, view.report)
        self._last = (view, index)
        return index


def add_fleet_routes(app: FastAPI, service: Any, read: list[Any]) -> None:
    """Add the routes of this module to ``app`` (``read``: the operator-token dependency)."""
    index = _PerView(service)

    @app.get("/v1/fleet/nodes", tags=["fleet"], dependencies=read,
             responses={422: {"description": "a selector, problem or sort that cannot be read"}})
    def fleet_nodes(selector: str | None = Query(None, max_length=1000, description="label selector: zone=eu,tier!=trusted"),
                    problem: str | None = Query(None, max_length=200, description="offline, isolated, licence, "
                                                "licence:expired, rule, rule:RULE, tier:untrusted, any, none"),
                    q: str | None = Query(None, max_length=200, description="text to search for"),
                    sort: str = Query("problems", description=f"one of {', '.join(SORT_KEYS)}; '-' reverses"),
                    limit: int = Query(50, ge=0, le=1000), offset: int = Query(0, ge=0)) -> Any:
        """Nodes of the last tick with their labels and problems: ``count`` match, ``total``
        in the fleet, ``nodes`` the page (worst first by default)."""
        try:
            chosen = parse(selector)
            page = index().query(chosen, problem or None, q or None, sort, limit, offset)
            keys = service.keys
            for row in page["nodes"]:
                row["enrolled"] = row["id"] in keys and not keys.is_revoked(row["id"])
            return page
        except SelectorError as exc:
            return _error(422, "bad_selector", str(exc), field="selector")
        except ValueError as exc:
            return _error(422, "bad_sort", str(exc), field="sort")

    @app.get("/v1/fleet/summary", tags=["fleet"], dependencies=read)
    def fleet_summary() -> dict[str, Any]:
        """Nodes by status, by zone and by trust tier (each with statuses, nodes with
        problems and isolated), and the 50 most frequent problems."""
        return index().summary()

    @app.get("/v1/fleet/tick", tags=["fleet"], dependencies=read,
             responses={404: {"description": "no tick yet"}})
    def fleet_tick() -> Any:
        """The last tick in brief, whatever the size of the fleet: number, duration,
        nodes per status, the actions decided (the first 200, and how many), drift counts,
        the enforcement section (modes, holds, shadow difference per rule)
        (``/v1/ticks/latest`` has the whole report)."""
        report = service.view.report
        if report is None:
            return _error(404, "no_tick", "no tick has run yet")
        return {"tick": report.tick, "started_at": report.started_at, "duration_ms": round(report.duration_ms, 3),
                "status_counts": report.status_counts(), "actions_total": len(report.actions),
                "actions": [a.to_dict() for a in report.actions[:200]], "drift": report.drift,
                "enforcement": report.enforcement,  # its lists are bounded where they are made
                "errors": [e.to_dict() for e in report.errors[:50]]}

    @app.get("/v1/fleet/history", tags=["fleet"], dependencies=read)
    def fleet_history(limit: int = Query(60, ge=1, le=1000)) -> dict[str, Any]:
        """The last ``limit`` committed ticks, oldest first: nodes per status, actions
        decided, rules failing and failing results."""
        return {"ticks": history(service.committed_ticks(limit))}

    @app.get("/v1/mesh/around/{node_id}", tags=["fleet"], dependencies=read,
             responses={404: {"description": "no such node in the mesh"}})
    def mesh_around(node_id: str, depth: int = Query(1, ge=1, le=4), limit: int = Query(200, ge=1, le=1000)) -> Any:
        """The mesh within ``depth`` hops of ``node_id`` (at most ``limit`` vertices),
        with each vertex's hop count and state, and the edges between them."""
        mesh = service.orchestrator.mesh
        for _ in range(3):  # read beside a running tick; one that changes the mesh meanwhile: read again
            try:
                around = neighbourhood(mesh.graph, node_id, depth, limit)
                cut = set(mesh.isolated)
                break
            except RuntimeError:  # "changed size during iteration"
                continue
        else:
            with service.lock:  # the mesh keeps moving: wait for the tick (a worker thread)
                around = neighbourhood(mesh.graph, node_id, depth, limit)
                cut = set(mesh.isolated)
        if around is None:
            return _error(404, "unknown_node", f"no node {node_id!r} in the mesh")
        nodes = service.view.nodes
        around["states"] = {v: {"status": n.status.value, "isolated": n.isolated, "load": n.load,
                                "trust_tier": n.trust_tier}
                            for v in around["hops"] if (n := nodes.get(v)) is not None}
        around["isolated"] = sorted(v for v in around["hops"] if v in cut)
        return around

    @app.get("/v1/nodes/{node_id}/explain", tags=["cluster"], dependencies=read,
             responses={404: {"description": "unknown node, or no tick yet"}})
    def explain(node_id: str) -> Any:
        """Why the node is as it is after the last tick: every rule's verdict with its
        trace, its trust, and the actions on it with their cause and what clears them
        (what ``wyneos explain`` prints, for agent-enrolled nodes too)."""
        from wyneos_core.explain import explain_node

        view = service.view
        node = view.nodes.get(node_id)
        if node is None:
            known = len(view.nodes)
            return _error(404, "unknown_node", f"no node {node_id!r} ({known} nodes; `wyneos get nodes` lists them)")
        if view.report is None:
            return _error(404, "no_tick", "no tick has run yet")
        with service.db_lock:
            committed = [a for a in service.db.actions("in_force") if a["target"] == node_id]
            times = service.db.tick_times(a["first_tick"] for a in committed)
        with service.lock:  # rule states and decisions move with the tick
            return explain_node(service.orchestrator, node, view.report, list(view.report.lifecycle), committed,
                                times)

    @app.get("/v1/enrol/tokens", tags=["fleet"], dependencies=read)
    def enrol_tokens() -> dict[str, Any]:
        """Enrolment tokens not yet used up: the first 12 characters of each one's hash
        (what ``wyneos enrol token revoke`` takes), its node, uses left and expiry."""
        with service.db_lock:
            rows = service.db.enrol_tokens()
        return {"tokens": [{"id": r["token_hash"][:12], "node_id": r["node_id"], "uses_left": r["uses_left"],
                            "expires_at": r["expires_at"], "created_at": r["created_at"]} for r in rows]}
