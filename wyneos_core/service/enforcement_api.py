"""Operator routes of graduated enforcement (docs/enforcement.md):

* ``POST /v1/overrides``: ``{"node", "kind": cordon|uncordon|isolate|reinstate, "reason",
  "by"}``: set or lift an operator override (``wyneos cordon ...``);
* ``GET /v1/overrides``: the overrides standing;
* ``POST /v1/exceptions``: add an exception (``owner``, ``reason``, ``expires`` and what
  it covers: ``node``, ``selector``, ``rule``, ``action``, ``licence_reason``);
* ``GET /v1/exceptions``: every exception (config and store), expired ones marked;
* ``GET /v1/shadow``: the candidate rulesets' difference in the last tick.

Writes need the operator **write** token (``service.write_token``), separate from the
read token: a request without it is refused (401, or 403 when the server has none) and
changes nothing. Overrides and exceptions are kept in the state store and act from the
next tick; an override's action is signed and delivered like any other action.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from wyneos_core.enforcement import exceptions as _exceptions
from wyneos_core.enforcement import overrides as _overrides
from wyneos_core.enforcement.gate import gate_of

__all__ = ["add_enforcement_routes"]

#: largest body of a write request
MAX_BODY = 16 * 1024


def _error(status: int, code: str, error: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"status": status, "code": code, "error": error, **extra}, status_code=status)


async def _body(request: Request) -> Any:
    """The request's JSON body (at most ``MAX_BODY`` bytes), or a ``JSONResponse`` refusing it."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return _error(413, "too_large", f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        return _error(422, "invalid", "the body is not JSON")


def add_enforcement_routes(app: FastAPI, service: Any, read: list[Any]) -> None:
    """Add this module's routes to ``app`` (``read``: the read-token dependency)."""
    token = service.settings.write_token

    def refused(request: Request) -> JSONResponse | None:
        if token is None:
            return _error(403, "write_disabled", "the write API is off: set service.write_token (or "
                                                 "write_token_file) to let operators act")
        given = request.headers.get("authorization", "")
        given = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):
            answer = _error(401, "write_token_required", "this route needs the operator write token "
                                                         "(service.write_token): send 'Authorization: Bearer <token>'")
            answer.headers["www-authenticate"] = 'Bearer realm="wyneos-write"'
            return answer
        return None

    async def write_body(request: Request) -> Any:
        """The JSON body of a write request, or the answer refusing it (no token, too large, not JSON)."""
        no = refused(request)
        return no if no is not None else await _body(request)

    async def locked(fn: Any, *args: Any) -> Any:
        def run() -> Any:
            with service.db_lock:
                return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, run)

    @app.post("/v1/overrides", tags=["enforcement"])
    async def set_override(request: Request) -> JSONResponse:
        """Set (cordon, isolate, reinstate) or lift (uncordon) the override of one node."""
        body = await write_body(request)
        if isinstance(body, JSONResponse):
            return body
        if not isinstance(body, dict):
            return _error(422, "invalid", "expected a JSON object", field="body")
        node, kind, reason, by = body.get("node"), body.get("kind"), body.get("reason"), body.get("by", "operator")
        try:
            _overrides.check(node, kind, reason, by)
            if kind != "uncordon" and node not in service.orchestrator.registry:
                return _error(404, "unknown_node", f"no node {node!r} in the cluster", field="node")
            made = await locked(_overrides.set_override, service.db, node, kind, reason, by)
        except _overrides.OverrideError as exc:
            return _error(422, "invalid", exc.reason, field=exc.field)
        return JSONResponse({"node": node, "kind": kind, "override": made.to_dict() if made else None,
                             "note": "acts from the next tick"}, status_code=200 if kind == "uncordon" else 201)

    @app.get("/v1/overrides", tags=["enforcement"], dependencies=read)
    async def list_overrides() -> JSONResponse:
        """The overrides standing (one per node)."""
        found = await locked(_overrides.stored, service.db)
        return JSONResponse({"overrides": [o.to_dict() for o in sorted(found.values(), key=lambda o: o.node)]})

    @app.post("/v1/exceptions", tags=["enforcement"])
    async def add_exception(request: Request) -> JSONResponse:
        """Add an exception (kept in the state store); an id already used is refused."""
        body = await write_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            if isinstance(body, dict) and ("created_at" in body or "source" in body):
                raise _exceptions.ExceptionError("created_at" if "created_at" in body else "source",
                                                 "set by the server")
            made = _exceptions.PolicyException.parse(body, now=time.time())
        except _exceptions.ExceptionError as exc:
            return _error(422, "invalid", exc.reason, field=exc.field)
        if made.expired(time.time()):
            return _error(422, "invalid", "already expired", field="expires")

        def add() -> str | None:
            current = _exceptions.stored(service.db)
            taken = {e.id for e in current} | {e.id for e in gate_of(service.orchestrator).config_exceptions}
            if made.id in taken:
                return f"an exception {made.id!r} exists already"
            _exceptions.store_all(service.db, [*current, made])
            return None

        try:
            clash = await locked(add)
        except _exceptions.ExceptionError as exc:
            return _error(422, "invalid", exc.reason, field=exc.field)
        if clash is not None:
            return _error(409, "exists", clash, field="id")
        return JSONResponse({"exception": made.to_dict()}, status_code=201)

    @app.get("/v1/exceptions", tags=["enforcement"], dependencies=read)
    async def list_exceptions() -> JSONResponse:
        """Every exception (from the config and the store), each with ``expired``."""
        stored = await locked(_exceptions.stored, service.db)
        now = time.time()
        rows = [{**e.to_dict(), "expired": e.expired(now)}
                for e in [*gate_of(service.orchestrator).config_exceptions, *stored]]
        return JSONResponse({"exceptions": rows})

    @app.get("/v1/shadow", tags=["enforcement"], dependencies=read)
    async def shadow() -> JSONResponse:
        """The candidate rulesets' difference from the live ones in the last published tick."""
        report = service.view.report
        if report is None:
            return JSONResponse({"tick": None, "shadow": None})
        return JSONResponse({"tick": report.tick, "shadow": report.enforcement.get("shadow")})
