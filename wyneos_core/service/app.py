"""The HTTP API of ``wyneos serve``: a FastAPI application around a ``Service``.

The OpenAPI document is at ``/openapi.json`` (interactive at ``/docs``). Request
bodies of the signed endpoints are read raw (the signature covers their exact bytes)
and checked by ``wyneos_core.service``; their schemas are declared for the OpenAPI
document only.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
import urllib.parse
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from wyneos_core import __version__
from wyneos_core.builtin.drift import drift_record
from wyneos_core.service.core import Service
from wyneos_core.service.outcomes import ENROL_PATH, HEARTBEAT_PATH, Unprocessable
from wyneos_core.service.enforcement_api import add_enforcement_routes
from wyneos_core.service.fleet_api import add_fleet_routes
from wyneos_core.service.heartbeat_api import HeartbeatAPI, fast_route
from wyneos_core.service.identity import AuthError, SignedItem, verify_item
from wyneos_core.service.limits import RateLimiter
from wyneos_core.service.metrics import CONTENT_TYPE_LATEST, licence_stop
from wyneos_core.service.overview import PerTick, licence_of, licence_overview, rule_overview
from wyneos_core.service.sessions import NONCE_PATH, SESSION_PATH
from wyneos_core.store import StoreError

__all__ = ["create_app"]

_SIGNED = {
    "parameters": [
        {"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
        for h in ("X-Wyneos-Node", "X-Wyneos-Timestamp", "X-Wyneos-Nonce", "X-Wyneos-Signature")
    ]
}
_HEARTBEAT_SCHEMA = {
    "type": "object",
    "properties": {
        "node_id": {"type": "string"}, "timestamp": {"type": "number"},
        "load": {"type": ["number", "null"]}, "metadata": {"type": "object"},
        "licence_ref": {"type": ["string", "null"]},
        "observations": {"type": "array", "maxItems": 64, "description": "witness observations of mesh neighbours",
                         "items": {"type": "object", "required": ["subject", "reachable"], "properties": {
                             "subject": {"type": "string"}, "reachable": {"type": "boolean"},
                             "rtt_ms": {"type": ["number", "null"]}, "last_seq": {"type": ["integer", "null"]}},
                             "additionalProperties": False}},
    },
    "additionalProperties": False,
}
_BATCH_SCHEMA = {
    "type": "object",
    "required": ["heartbeats"],
    "properties": {"heartbeats": {"type": "array", "items": {"oneOf": [
        {"type": "object", "required": ["node", "timestamp", "nonce", "signature", "body"],
         "properties": {k: {"type": "string"} for k in ("node", "timestamp", "nonce", "signature", "body")}},
        {"type": "object", "required": ["session", "seq", "mac", "body"],
         "properties": {"session": {"type": "string"}, "seq": {"type": "integer", "minimum": 1},
                        "mac": {"type": "string"}, "body": {"type": "string"}}},
    ]}}},
}
_SESSION_HEADERS = [
    {"name": h, "in": "header", "required": False, "schema": {"type": "string"}, "description": d}
    for h, d in (("X-Wyneos-Session", "session id (a session heartbeat)"),
                 ("X-Wyneos-Seq", "sequence number, strictly increasing within the session"),
                 ("X-Wyneos-Mac", "keyed BLAKE2b-128 of the sequence number and the exact body, hex"),
                 ("X-Wyneos-Node", "signed heartbeat: node id"), ("X-Wyneos-Timestamp", "signed heartbeat"),
                 ("X-Wyneos-Nonce", "signed heartbeat"), ("X-Wyneos-Signature", "signed heartbeat"))
]
_SESSION_ERRORS = {
    429: {"description": "session over its rate (heartbeat_rate, heartbeat_burst)"},
    503: {"description": "heartbeat queue or session table full: retry later"},
}
_ERRORS = {
    401: {"description": "unsigned, unknown node or bad signature"},
    403: {"description": "revoked key, or a body speaking for another node"},
    409: {"description": "replayed nonce, or timestamp outside the replay window"},
    408: {"description": "body not received within service.body_timeout"},
    413: {"description": "body larger than the configured limit"},
    422: {"description": "body not valid (names the field)"},
    429: {"description": "rate limit: service.heartbeat_rate per node, service.enrol_rate per address"},
}


_COOKIE = "wyneos_read"
_LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>WyneOS: sign in</title></head>
<body style="font-family: sans-serif; margin: 3em"><h1>WyneOS orchestrator</h1>
<p>The dashboard needs the operator token (<code>service.read_token</code>).</p><p><b><!--msg--></b></p>
<form method="post" action="/login"><input type="password" name="token" autocomplete="current-password" size="40">
<button type="submit">Sign in</button></form></body></html>"""


class _TooLarge(Exception):
    pass


class _SlowBody(Exception):
    pass


async def _read_body(request: Request, limit: int, deadline: float) -> bytes:
    """The request body: at most ``limit`` bytes, all of it within ``deadline`` seconds."""
    length = request.headers.get("content-length")
    if length is not None:
        if not (0 < len(length) <= 20 and length.isdigit()):
            raise Unprocessable("content-length", "not a number")
        if int(length) > limit:
            raise _TooLarge(f"body of {int(length)} bytes is larger than the limit of {limit}")
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(deadline):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _TooLarge(f"body is larger than the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise _SlowBody(f"the body did not arrive within {deadline:g} s (service.body_timeout)") from None
    return b"".join(chunks)


def _error(status: int, code: str, error: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"status": status, "code": code, "error": error, **extra}, status_code=status)


class _App(FastAPI):
    """FastAPI, with some routes served as plain ASGI callables in front of it (their
    FastAPI twins stay in the OpenAPI document)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_routes: dict[str, Any] = {}
        self.heartbeat_api: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.fast_routes.get(scope["path"])
            if route is not None:
                await route(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(service: Service, *, manage: bool = True) -> FastAPI:
    """The FastAPI application for ``service``.

    :param manage: start the service's tick thread when the app starts and stop it
        when the app stops.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if manage:
            service.start()
        try:
            yield
        finally:
            if manage:
                await asyncio.get_running_loop().run_in_executor(None, service.stop)

    app = _App(title="WyneOS orchestrator", version=__version__, lifespan=lifespan,
                  description="Heartbeats, node enrolment, cluster state and metrics of a WyneOS orchestrator.")
    settings = service.settings
    orch = service.orchestrator

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> JSONResponse:
        answer = _error(exc.status, exc.code, exc.reason)
        if exc.code == "read_token_required":
            answer.headers["www-authenticate"] = 'Bearer realm="wyneos"'
        return answer

    @app.exception_handler(Unprocessable)
    async def _unprocessable(request: Request, exc: Unprocessable) -> JSONResponse:
        return _error(422, "invalid", exc.reason, field=exc.field)

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        # the state cannot be written now (replicas: etcd has no quorum): nothing changed, retry
        return _error(503, "state_unavailable", str(exc)[:300])

    @app.exception_handler(_TooLarge)
    async def _too_large(request: Request, exc: _TooLarge) -> JSONResponse:
        return _error(413, "too_large", str(exc))

    @app.exception_handler(_SlowBody)
    async def _slow_body(request: Request, exc: _SlowBody) -> JSONResponse:
        return JSONResponse({"status": 408, "code": "body_timeout", "error": str(exc)}, status_code=408,
                            headers={"connection": "close"})

    read_token = settings.read_token
    login_limit = RateLimiter(settings.enrol_rate, settings.enrol_burst, max_keys=65_536)

    def has_reader(request: Request) -> bool:
        if read_token is None:
            return True
        given = request.headers.get("authorization", "")
        if given[:7].lower() == "bearer ":
            given = given[7:].strip()
        else:
            given = request.cookies.get(_COOKIE, "")
        return hmac.compare_digest(given.encode("utf-8", "replace"), read_token.encode())

    async def reader(request: Request) -> None:
        """The read API and the dashboard need the operator token (when one is set)."""
        if not has_reader(request):
            raise AuthError(401, "the read API needs the operator token (service.read_token): "
                                 "send 'Authorization: Bearer <token>'", "read_token_required")

    read = [Depends(reader)]

    def authenticate(request: Request, body: bytes, node_id: str | None = None) -> SignedItem:
        item = SignedItem.from_headers(request.headers, body)
        now = time.time()
        ts = verify_item(item, request.method, request.url.path, service.keys, now)
        if node_id is not None and item.node_id != node_id:
            raise AuthError(403, f"signed by {item.node_id!r}, not by {node_id!r}", "node_mismatch")
        service.nonces.check_time(ts, now)
        service.nonces.claim(item.node_id, item.nonce, ts, now)
        return item

    # -- node-facing ---------------------------------------------------------------------

    @app.post(ENROL_PATH, status_code=201, tags=["nodes"], responses=_ERRORS,
              openapi_extra={**_SIGNED, "requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"type": "object", "required": ["node_id", "public_key"], "properties": {
                      "node_id": {"type": "string"}, "public_key": {"type": "string"}, "token": {"type": "string"}}}}}}})
    async def enrol(request: Request) -> JSONResponse:
        """Enrol a node's Ed25519 key, signed by that key; needs an enrolment token
        (``wyneos enrol token``) unless the config pins the node's fingerprint."""
        source = request.client.host if request.client else "-"
        if not service.enrol_limit.allow(source, time.monotonic()):
            service.metrics.enrolments.labels("rate_limited").inc()
            wait = max(1, math.ceil(service.enrol_limit.retry_after(source)))
            return JSONResponse({"status": 429, "code": "rate_limited",
                                 "error": f"too many enrolment attempts from {source} (service.enrol_rate)"},
                                status_code=429, headers={"retry-after": str(wait)})
        body = await _read_body(request, settings.max_request_bytes, settings.body_timeout)
        item = SignedItem.from_headers(request.headers, body)
        try:  # enrolment takes the tick lock: a worker thread waits for it, not the event loop
            status, answer = await asyncio.get_running_loop().run_in_executor(None, service.enrol, item)
        except AuthError as exc:
            service.metrics.enrolments.labels(exc.code).inc()
            raise
        service.metrics.enrolments.labels("enrolled" if status == 201 else "again").inc()
        return JSONResponse(answer, status_code=status)

    api = HeartbeatAPI(service)
    app.heartbeat_api = api  # the protocol answers single session heartbeats with it (service.fast_single)
    app.fast_routes[HEARTBEAT_PATH] = fast_route(api)  # served in front of FastAPI, same code

    @app.post(HEARTBEAT_PATH, status_code=202, tags=["nodes"], responses={**_ERRORS, **_SESSION_ERRORS},
              openapi_extra={"parameters": _SESSION_HEADERS, "requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"oneOf": [_HEARTBEAT_SCHEMA, _BATCH_SCHEMA]}}}}})
    async def heartbeats(request: Request) -> Response:
        """A session heartbeat (``X-Wyneos-Session``, ``X-Wyneos-Seq``, ``X-Wyneos-Mac``
        headers; the answer's ``X-Wyneos-Mac`` is the session key's MAC of its bytes), one
        heartbeat signed in the request headers, or ``{"heartbeats": [...]}``: a batch
        whose items each carry their own session id, sequence number and MAC, or their
        own node, timestamp, nonce and signature, and their body (the exact bytes MACed
        or signed). Accepted heartbeats are queued for the next tick (202); the answer
        to a single heartbeat carries the actions waiting for the node. Served by a plain
        ASGI route in front of FastAPI (``wyneos_core.service.heartbeat_api``)."""
        get = request.headers.get
        body = await _read_body(request, api.limit(get), settings.body_timeout)
        status, data, extra = await api.handle(get, body)
        return Response(data, status_code=status, media_type="application/json",
                        headers={k.decode(): v.decode() for k, v in extra})

    for path in (NONCE_PATH, SESSION_PATH):
        app.fast_routes[path] = app.fast_routes[HEARTBEAT_PATH]

    @app.post(NONCE_PATH, tags=["sessions"])
    async def session_nonce() -> Response:
        """A fresh server nonce for a session handshake (valid 60 s, usable once)."""
        status, data = api.nonce()
        return Response(data, status_code=status, media_type="application/json")

    @app.post(SESSION_PATH, status_code=201, tags=["sessions"], responses={**_ERRORS, **_SESSION_ERRORS},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"type": "object", "required": ["node_id", "nonce", "agent_key", "signature"],
                             "properties": {k: {"type": "string"} for k in
                                            ("node_id", "nonce", "agent_key", "signature")}}}}}})
    async def open_session(request: Request) -> Response:
        """Open a heartbeat session: the node signs the nonce, its id and its ephemeral
        X25519 key with its Ed25519 node key; the answer (a ``wyneos.session/1`` envelope
        signed by the orchestrator key) carries the server's ephemeral key, the session
        id and the expiry. See docs/sessions.md."""
        body = await _read_body(request, settings.max_request_bytes, settings.body_timeout)
        status, data = api.open_session(body)
        return Response(data, status_code=status, media_type="application/json")

    @app.get("/v1/nodes/{node_id}/actions", tags=["nodes"], responses=_ERRORS, openapi_extra=_SIGNED)
    async def node_actions(node_id: str, request: Request) -> dict[str, Any]:
        """The actions waiting for this node (the request signed by the node itself), each
        an envelope signed by the orchestrator key."""
        authenticate(request, b"", node_id)
        return {"node_id": node_id, "actions": service.outbox.signed(node_id), "server_time": time.time(),
                "orchestrator_key": service.key_ref()}

    @app.post("/v1/nodes/{node_id}/actions/ack", tags=["nodes"], responses=_ERRORS,
              openapi_extra={**_SIGNED, "requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"type": "object", "properties": {
                      "acks": {"type": "array", "items": {
                          "type": "object", "required": ["format", "payload", "signature"], "properties": {
                              "format": {"const": "wyneos.ack/1"}, "payload": {"type": "object"},
                              "signature": {"type": "string"}}}},
                      "refusals": {"type": "array", "items": {
                          "type": "object", "required": ["reason"], "properties": {
                              "reason": {"type": "string"}, "action_id": {"type": ["string", "null"]},
                              "detail": {"type": "string"}}}}}}}}}})
    async def node_ack(node_id: str, request: Request) -> JSONResponse:
        """Acknowledge actions delivered to this node (each ack a ``wyneos.ack/1``
        envelope signed by the node key: applied, failed or ignored), and report actions
        the node refused. An action that was never delivered to the node is refused
        (``refused`` in the answer; 422 when nothing was acknowledged or reported)."""
        body = await _read_body(request, settings.max_request_bytes, settings.body_timeout)
        authenticate(request, body, node_id)
        status, answer = await asyncio.get_running_loop().run_in_executor(None, service.acknowledge, node_id, body)
        return JSONResponse(answer, status_code=status)

    # -- operator-facing -----------------------------------------------------------------

    # Read endpoints work on the published ``service.view`` (never the tick lock) and are
    # plain functions: FastAPI runs them in worker threads, so a big answer being built
    # never holds up the event loop (heartbeat intake).

    @app.get("/v1/nodes", tags=["cluster"], dependencies=read)
    def nodes(status: str | None = None, limit: int | None = None, offset: int = 0) -> dict[str, Any]:
        """Nodes of the registry as of the last tick (optionally only those with
        ``status``; ``limit`` and ``offset`` page through them). ``count`` is the number
        of matching nodes, ``nodes`` the page."""
        view = service.view
        chosen = [n for n in view.nodes.values() if status is None or n.status.value == status]
        start = max(0, offset)
        page = chosen[start:] if limit is None else chosen[start:start + max(0, limit)]
        return {"count": len(chosen), "tick": view.tick, "nodes": [_node(service, n) for n in page]}

    @app.get("/v1/nodes/{node_id}", tags=["cluster"], responses={404: {"description": "unknown node"}},
             dependencies=read)
    def node(node_id: str) -> JSONResponse:
        n = service.view.nodes.get(node_id)
        if n is None:
            return _error(404, "unknown_node", f"no node {node_id!r}")
        data = _node(service, n)
        data["pending_actions"] = service.outbox.pending(node_id)
        return JSONResponse(data)

    @app.get("/v1/ticks/latest", tags=["cluster"], responses={404: {"description": "no tick yet"}},
             dependencies=read)
    def latest_tick() -> JSONResponse:
        """The full report of the last tick (after a restart, before the first new tick:
        the last committed summary)."""
        report = service.view.report
        if report is None:
            summaries = service.committed_ticks(1)
            if not summaries:
                return _error(404, "no_tick", "no tick has run yet")
            return JSONResponse({**summaries[0], "summary_only": True})
        return JSONResponse(report.to_dict())

    @app.get("/v1/ticks", tags=["cluster"], dependencies=read)
    def ticks(limit: int = 20) -> dict[str, Any]:
        """Summaries of the last ``limit`` committed ticks (kept: ``state.retention_ticks``)."""
        return {"ticks": service.committed_ticks(max(1, min(limit, 1000)))}

    @app.get("/v1/actions", tags=["cluster"], dependencies=read)
    def actions() -> dict[str, Any]:
        """Committed decisions: actions in force, recent lifecycle events, agent acks."""
        return service.committed_actions()

    licences_of, rules_of = PerTick(licence_overview), PerTick(rule_overview)

    @app.get("/v1/licences", tags=["cluster"], dependencies=read)
    def licences() -> dict[str, Any]:
        """Licence results of the last tick by state and reason code: count, meaning of
        the code, the first node's detail and a few node ids."""
        return licences_of(service.view.report)

    @app.get("/v1/rules", tags=["cluster"], dependencies=read)
    def rules() -> dict[str, Any]:
        """Every rule of the last tick: nodes passed, failing and firing, the first
        failing node's message and a few node ids (failing rules first)."""
        return rules_of(service.view.report)

    @app.get("/v1/mesh", tags=["cluster"], dependencies=read)
    def mesh() -> dict[str, Any]:
        """The mesh for the dashboard: nodes with state, edges, isolated nodes."""
        return service.mesh_view()

    @app.get("/healthz", tags=["service"])
    async def healthz() -> JSONResponse:
        """Health of governance: ``ok``; ``degraded`` (200) when the state file cannot be
        written (``state_error`` names the cause; decisions are kept in memory and
        written once it works); ``failing`` (503) when the tick thread stopped or the
        last tick is late (started more than the interval plus ``service.late_tick``
        seconds ago: a tick hangs; a replica that does not decide is never late). With
        replicas: ``role`` (leader or follower), the cluster's ``tick``, the ``leader``."""
        view = service.view
        now = time.time()
        age = None if view.report is None else now - view.report.started_at
        since = now - (view.report.started_at if view.report is not None else service.started_at)
        leadership = service.leadership()
        late = service.running and leadership["deciding"] and since > service.interval + settings.late_tick
        state_error = getattr(orch, "state_error", None)
        if not service.running or service.tick_error is not None or late:
            status = "failing"
        else:
            status = "degraded" if state_error else "ok"
        body = {"status": status, "tick": view.tick, "last_tick_age": age, "tick_late": late,
                "nodes": len(view.nodes), "enrolled": service.keys.active_count(),
                "tick_interval": service.interval, "tick_error": service.tick_error, "state_error": state_error,
                "version": __version__, **leadership}
        stop = licence_stop(view.report)
        # the service is alive, but licence enforcement is frozen: say why (see docs/licences.md)
        body["licence_safety_stop"] = None if stop is None else stop[1]
        return JSONResponse(body, status_code=503 if status == "failing" else 200)

    @app.get("/metrics", tags=["service"], response_class=Response, dependencies=read)
    async def metrics() -> Response:
        """Prometheus text format."""
        service.metrics.queue.set(len(orch.intake))
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard(request: Request) -> HTMLResponse:
        if not has_reader(request):
            return HTMLResponse(_LOGIN_PAGE, status_code=401)
        page = resources.files("wyneos_core.service").joinpath("dashboard.html").read_text()
        return HTMLResponse(page)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """The dashboard's sign-in: the operator token in a form; a good one sets an
        HttpOnly, SameSite=Strict cookie that the page's requests then carry."""
        source = request.client.host if request.client else "-"
        if not login_limit.allow(source, time.monotonic()):
            return HTMLResponse(_LOGIN_PAGE.replace("<!--msg-->", "Too many attempts; wait a little."), status_code=429)
        body = await _read_body(request, 4096, settings.body_timeout)
        given = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        if read_token is None or not hmac.compare_digest(given.encode("utf-8", "replace"), read_token.encode()):
            return HTMLResponse(_LOGIN_PAGE.replace("<!--msg-->", "Wrong token."), status_code=401)
        answer = Response(status_code=303, headers={"location": "/"})
        answer.set_cookie(_COOKIE, given, httponly=True, samesite="strict", path="/")
        return answer

    add_fleet_routes(app, service, read)  # /v1/fleet/*, explain, tokens: service/fleet_api.py
    add_enforcement_routes(app, service, read)  # overrides, exceptions, shadow: service/enforcement_api.py
    return app


def _node(service: Service, n: Any) -> dict[str, Any]:
    data = n.to_dict()
    data["enrolled"] = n.id in service.keys and not service.keys.is_revoked(n.id)
    data["revoked"] = service.keys.is_revoked(n.id)
    report = service.view.report
    data["licence"] = licence_of(report.licences.get(n.id)) if report is not None else None
    data["drift"] = drift_record(service.orchestrator, n.id)  # docs/drift.md
    return data
