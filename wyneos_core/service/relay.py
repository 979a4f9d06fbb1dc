"""``wyneos relay``: gathers the heartbeats of the agents behind it and forwards them in batches.

A relay sits on a site, in front of many agents, and speaks the orchestrator's API to
them: they point ``wyneos agent --server`` at it. Heartbeats (session or signed, single
or batched) are turned into batch items **unchanged**: a session item keeps its
session id, sequence number, MAC and exact body, a signed item its node, timestamp,
nonce, signature and exact body. The relay holds no key and is trusted with nothing:
it cannot forge an item, and an item it altered is refused by the orchestrator, that
item alone (``docs/sessions.md``). What it can do is drop or delay items, as any
network path can.

Items are forwarded in arrival order, one batch at a time (a batch leaves when it holds
``batch`` items or ``flush`` seconds after its first one), so no heartbeat of a node
overtakes an older one. Each agent's request waits for its own item's result and gets
it: 202, or the orchestrator's refusal of that item. For session items the relay asks
the orchestrator for acknowledgements: the session key's MAC of the accepted sequence
number, passed on to the agent as ``ack``, so an agent behind a relay still knows its
heartbeat was taken by the orchestrator and not just by the relay.

Every other request (enrolment, the session handshake, action polls and acks) is
passed through as it is: they are signed end to end, and the handshake's answer is
signed by the orchestrator key. The queue of items waiting is bounded (``max_pending``;
503 when full).

**Limits** (a relay faces the same hostile network as ``wyneos serve``):

* connections are served by the same guard as serve (``service.guard``): bounded
  request heads (431), a deadline for each head (408), idle keep-alive connections
  closed, and at most ``max_connections`` connections, silent and idle ones shed first;
  a request body must arrive in full within ``body_timeout`` seconds (408);
* only the agent routes are passed through (enrolment, the session handshake, a node's
  action poll and acknowledgements): the read API, ``/metrics`` and the dashboard of
  the orchestrator are never reachable through a relay (404), whatever its token;
* each item is bounded (``MAX_ITEM`` bytes, known fields only, strings where strings
  belong) and checked **before** it joins an upstream batch: a bad item is refused
  alone (413/422), and a batch never grows past ``max_batch_bytes``, so one client
  cannot make the orchestrator refuse a whole batch; if the orchestrator still refuses
  a batch as too large (413), the relay splits it and sends the halves;
* every upstream request has **one deadline** (``timeout`` seconds, for sending,
  the answer's head and its body together) and its answer a size cap: a trickled or
  huge answer costs at most the deadline and the cap, never a stalled queue or memory;
* a relay binds a non-loopback address only when its upstream is not on loopback
  (:func:`check_bind`): a loopback orchestrator (which may run without a read token) is
  not made reachable from the network through a relay.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, urlsplit

import msgspec

from wyneos_core.service.bounded_http import exchange
from wyneos_core.service.settings import is_loopback

__all__ = ["MAX_ITEM", "Relay", "RelayError", "check_bind", "create_relay_app", "relay_config"]

log = logging.getLogger("wyneos.relay")

HEARTBEAT_PATH = "/v1/heartbeats"
_PASSED_HEADERS = ("content-type", "x-wyneos-node", "x-wyneos-timestamp", "x-wyneos-nonce", "x-wyneos-signature",
                   "x-wyneos-session", "x-wyneos-seq", "x-wyneos-mac")
_MAX_BODY = 8 * 1024 * 1024
_MAX_SINGLE = 64 * 1024
#: largest batch item (its JSON) the relay forwards: a single heartbeat's limit plus room for its fields
MAX_ITEM = _MAX_SINGLE + 1024
_ITEM_FIELDS = {"body": str, "session": str, "seq": int, "mac": str, "node": str, "timestamp": str, "nonce": str,
                "signature": str}
#: the routes an agent uses; nothing else is passed through (never the read API)
_AGENT_ROUTES = (("POST", re.compile(r"/v1/enrol")), ("POST", re.compile(r"/v1/sessions(/nonce)?")),
                 ("GET", re.compile(r"/v1/nodes/[^/\s]{1,256}/actions")),
                 ("POST", re.compile(r"/v1/nodes/[^/\s]{1,256}/actions/ack")))
_MAX_ANSWER = 8 * 1024 * 1024  # bytes of an upstream answer read at most


def check_bind(host: str, upstream: str) -> None:
    """Refuse to serve a loopback orchestrator on a non-loopback address.

    :raises RelayError: naming both addresses and what to do instead.
    """
    upstream_host = urlsplit(upstream).hostname or ""
    if not is_loopback(host) and is_loopback(upstream_host):
        raise RelayError(f"binding {host} (not a loopback address) would make the orchestrator at {upstream}, which "
                         "listens on loopback only (and may run without a read token), reachable from the network; "
                         "bind a loopback address (--host 127.0.0.1) or point --upstream at the orchestrator's "
                         "network address (serve needs service.read_token to bind one)")


_Unset = msgspec.UnsetType
_UNSET = msgspec.UNSET


class _Item(msgspec.Struct, forbid_unknown_fields=True):
    """A batch item with its known fields typed (strings and a whole-number ``seq``; no
    null: a field is there with its type or absent); re-encoded compactly as it is
    forwarded, its values unchanged."""

    body: str
    session: str | _Unset = _UNSET
    seq: int | _Unset = _UNSET
    mac: str | _Unset = _UNSET
    node: str | _Unset = _UNSET
    timestamp: str | _Unset = _UNSET
    nonce: str | _Unset = _UNSET
    signature: str | _Unset = _UNSET


class _Batch(msgspec.Struct):
    heartbeats: list[_Item]


_batch_decoder = msgspec.json.Decoder(_Batch)
_encode = msgspec.json.encode
_MAX_ITEMS = 20_000  # items in one batch a relay takes


def check_batch(body: bytes) -> list[tuple[bytes | None, tuple[int, dict[str, Any]] | None]] | None:
    """A batch's items as :func:`check_item` returns them, or None when the batch is not
    ``{"heartbeats": [...]}`` of at most ``_MAX_ITEMS`` items. Every item is decoded
    typed at once (msgspec); a batch with one bad item is looked at item by item."""
    try:
        typed = _batch_decoder.decode(body).heartbeats
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        typed = None
    if typed is not None:
        if len(typed) > _MAX_ITEMS:
            return None
        out: list[tuple[bytes | None, tuple[int, dict[str, Any]] | None]] = []
        for item in typed:
            raw = _encode(item)
            if len(raw) > MAX_ITEM:
                out.append((None, _answer(413, "too_large", f"a batch item of {len(raw)} bytes is larger than the "
                                          f"limit of {MAX_ITEM}")))
            else:
                out.append((raw, None))
        return out
    try:
        data = json.loads(body)
        raw_items = data["heartbeats"]
        if not isinstance(raw_items, list) or len(raw_items) > _MAX_ITEMS:
            raise TypeError
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return [check_item(x) for x in raw_items]


def check_item(raw: Any) -> tuple[bytes | None, tuple[int, dict[str, Any]] | None]:
    """A batch item as forwarded (compact JSON), or its refusal: bounded and of known
    fields before it may join an upstream batch."""
    if not isinstance(raw, dict) or "body" not in raw:
        return None, _answer(422, "invalid", "a batch item is an object with a body and its session or signature "
                             "fields", field="heartbeats")
    for key, value in raw.items():
        kind = _ITEM_FIELDS.get(key)
        if kind is None or type(value) is not kind:  # (bool is no int here: ``type`` is exact)
            return None, _answer(422, "invalid", f"unknown field or wrong type in a batch item: {str(key)[:64]!r}",
                                 field=f"heartbeats.{str(key)[:64]}")
    item = json.dumps(raw, separators=(",", ":")).encode()
    if len(item) > MAX_ITEM:
        return None, _answer(413, "too_large", f"a batch item of {len(item)} bytes is larger than the limit of "
                             f"{MAX_ITEM}")
    return item, None


def _agent_route(method: str, path: str) -> bool:
    return any(method == m and pattern.fullmatch(path) for m, pattern in _AGENT_ROUTES)


class RelayError(RuntimeError):
    """The relay cannot be set up as asked."""


def _answer(status: int, code: str, error: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    return status, {"status": status, "code": code, "error": error, **extra}


class Relay:
    """The forwarding engine (framework-free; :func:`create_relay_app` serves it).

    :param upstream: base URL of the orchestrator (or of the next relay).
    :param batch: most items per forwarded batch (at most 1000, so that the
        orchestrator's answer lists every refusal).
    :param flush: seconds a batch waits for more items after its first one.
    :param max_pending: most items waiting to be forwarded.
    :param timeout: seconds one upstream request may take in all (sending, the
        answer's head and body): one deadline, however the answer trickles.
    :param max_batch_bytes: most bytes of items in one upstream batch.
    :param alter: test hook only: a function given each forwarded batch's items (JSON
        bytes) that may return them changed (what a hostile relay would do).
    """

    def __init__(self, upstream: str, *, batch: int = 1000, flush: float = 0.05, max_pending: int = 100_000,
                 timeout: float = 10.0, max_batch_bytes: int = 4 * 1024 * 1024,
                 alter: Callable[[list[bytes]], list[bytes]] | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RelayError(f"upstream URL {upstream!r} must look like http://HOST:PORT")
        if not 1 <= batch <= 1000 or not flush > 0 or max_pending < 1 or not timeout > 0 \
                or max_batch_bytes < MAX_ITEM:
            raise RelayError(f"batch must be 1-1000, flush and timeout above 0, max_pending at least 1, "
                             f"max_batch_bytes at least {MAX_ITEM}")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.batch = batch
        self.flush = flush
        self.max_pending = max_pending
        self.timeout = timeout
        self.max_batch_bytes = max_batch_bytes
        self.alter = alter
        self.forwarded = 0
        self.batches = 0
        self._pending: list[tuple[bytes, _Group, int]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._local = threading.local()

    # -- upstream (worker threads) ------------------------------------------------------------

    def _holder(self, which: str) -> Any:
        # one forwarding connection (batches go one at a time); pass-through requests
        # run on several worker threads: one connection per thread
        return self if which == "_conn" else self._local

    def _connection(self, which: str) -> http.client.HTTPConnection:
        holder = self._holder(which)
        conn = getattr(holder, which, None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=self.timeout)
            setattr(holder, which, conn)
        return conn

    def _send(self, which: str, method: str, path: str, body: bytes,
              headers: dict[str, str]) -> tuple[int, bytes, list[tuple[str, str]]]:
        deadline = time.monotonic() + self.timeout  # one deadline for the whole request
        for attempt in (0, 1):
            conn = self._connection(which)
            try:
                response, raw = exchange(conn, method, path, body or None, headers, deadline=deadline,
                                         max_bytes=_MAX_ANSWER)
                return response.status, raw, response.getheaders()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()  # a kept-alive connection the upstream closed: once more on a new one
                setattr(self._holder(which), which, None)
                if attempt:
                    raise
            except (OSError, http.client.HTTPException):
                conn.close()
                setattr(self._holder(which), which, None)
                raise
        raise ConnectionError("unreachable")  # pragma: no cover

    def forward(self, items: list[bytes]) -> list[tuple[int, dict[str, Any]]]:
        """Send one batch upstream; one (status, answer) per item. Blocking."""
        if self.alter is not None:
            items = self.alter(list(items))
        return self._forward(items)

    def _forward(self, items: list[bytes]) -> list[tuple[int, dict[str, Any]]]:
        body = b'{"acks":true,"heartbeats":[' + b",".join(items) + b"]}"
        try:
            status, raw, _ = self._send("_conn", "POST", HEARTBEAT_PATH, body, {"content-type": "application/json"})
        except (OSError, http.client.HTTPException) as exc:
            return [_answer(503, "upstream_unreachable", f"the relay cannot reach the orchestrator: {exc}")] * len(items)
        try:
            data = json.loads(raw)
        except ValueError:
            data = {}
        if status == 413 and len(items) > 1:  # too large for the orchestrator's limit: the halves go alone
            half = len(items) // 2
            return self._forward(items[:half]) + self._forward(items[half:])
        if not isinstance(data, dict) or "results" not in data:  # the whole batch was refused
            code = data.get("code", "upstream_error") if isinstance(data, dict) else "upstream_error"
            error = data.get("error", "") if isinstance(data, dict) else ""
            return [_answer(status if status >= 400 else 502, code, f"the orchestrator refused the batch: {error}")] \
                * len(items)
        results = data["results"] if isinstance(data["results"], list) else []
        refused = {r.get("index"): r for r in results if isinstance(r, dict)}
        acks = data.get("acks") if isinstance(data.get("acks"), dict) else {}
        out: list[tuple[int, dict[str, Any]]] = []
        for i in range(len(items)):
            r = refused.get(i)
            if r is None:
                answer: dict[str, Any] = {"accepted": 1, "relayed": True, "server_time": data.get("server_time")}
                ack = acks.get(str(i))
                if ack is not None:
                    answer["ack"] = ack
                out.append((202, answer))
            else:
                code = r.get("status")
                out.append((code if type(code) is int and 400 <= code <= 599 else 502,
                            {k: v for k, v in r.items() if k != "index"}))
        self.forwarded += len(items)
        self.batches += 1
        return out

    def proxy(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        """Pass a request through as it is (signed end to end). Blocking."""
        try:
            status, raw, got = self._send("_proxy_conn", method, path, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            return 503, json.dumps(_answer(503, "upstream_unreachable", str(exc))[1]).encode(), "application/json"
        content_type = next((v for k, v in got if k.lower() == "content-type"), "application/json")
        return status, raw, content_type

    # -- the forwarding loop (event loop) --------------------------------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, group, index in self._pending:
            group.settle(index, _answer(503, "relay_stopping", "the relay is stopping"))
        self._pending.clear()

    async def submit(self, items: list[bytes]) -> list[tuple[int, dict[str, Any]]]:
        """Queue items for the next batches; their results, in order (one future for the
        request's items together, not one per item)."""
        if len(self._pending) + len(items) > self.max_pending:
            return [_answer(503, "relay_full", f"the relay holds {self.max_pending} heartbeats already; retry later")] \
                * len(items)
        if not items:
            return []
        group = _Group(asyncio.get_running_loop().create_future(), len(items))
        self._pending.extend((item, group, i) for i, item in enumerate(items))
        assert self._wake is not None
        self._wake.set()
        return await group.future

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            if len(self._pending) < self.batch:
                await asyncio.sleep(self.flush)  # let a batch fill
            while self._pending:
                count, size = 0, 0
                for item, _, _ in self._pending[:self.batch]:
                    if count and size + len(item) + 1 > self.max_batch_bytes:
                        break
                    count, size = count + 1, size + len(item) + 1
                chunk, self._pending = self._pending[:count], self._pending[count:]
                try:
                    results = await loop.run_in_executor(None, self.forward, [item for item, _, _ in chunk])
                except Exception as exc:  # noqa: BLE001 - every waiting agent gets an answer
                    log.exception("forwarding a batch failed")
                    results = [_answer(502, "relay_error", f"{type(exc).__name__}: {exc}")] * len(chunk)
                for (_, group, index), result in zip(chunk, results):
                    group.settle(index, result)


class _Group:
    """The items of one request waiting for their results (one future for all)."""

    __slots__ = ("future", "results", "left")

    def __init__(self, future: asyncio.Future[list[tuple[int, dict[str, Any]]]], count: int) -> None:
        self.future = future
        self.results: list[tuple[int, dict[str, Any]] | None] = [None] * count
        self.left = count

    def settle(self, index: int, result: tuple[int, dict[str, Any]]) -> None:
        if self.results[index] is None:
            self.results[index] = result
            self.left -= 1
            if not self.left and not self.future.done():
                self.future.set_result(self.results)  # type: ignore[arg-type]


def _item_from_session(headers: dict[str, str], body: bytes) -> dict[str, Any] | None:
    seq = headers.get("x-wyneos-seq", "")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not seq.isdigit() or len(seq) > 20:
        return None
    return {"session": headers["x-wyneos-session"], "seq": int(seq), "mac": headers.get("x-wyneos-mac", ""),
            "body": text}


def _item_from_signed(headers: dict[str, str], body: bytes) -> dict[str, Any] | None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return {"node": headers.get("x-wyneos-node", ""), "timestamp": headers.get("x-wyneos-timestamp", ""),
            "nonce": headers.get("x-wyneos-nonce", ""), "signature": headers.get("x-wyneos-signature", ""),
            "body": text}


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def create_relay_app(relay: Relay, *, body_timeout: float = 30.0) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The relay as an ASGI application (``body_timeout``: seconds a request body has
    to arrive in full)."""

    async def respond(send: Send, status: int, data: bytes, content_type: str = "application/json",
                      close: bool = False) -> None:
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(data)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def refuse(send: Send, status: int, code: str, error: str, **extra: Any) -> None:
        await respond(send, status, json.dumps(_answer(status, code, error, **extra)[1]).encode(),
                      close=status == 408)

    async def read_body(receive: Receive, limit: int) -> bytes | tuple[int, str, str] | None:
        chunks, size, more = [], 0, True
        try:
            async with asyncio.timeout(body_timeout):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return 413, "too_large", f"body is larger than the limit of {limit} bytes"
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            return 408, "body_timeout", f"the body did not arrive within {body_timeout:g} s"
        return b"".join(chunks)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    relay.start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await relay.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k.decode("latin-1") in _PASSED_HEADERS}
        path, method = scope["path"], scope["method"]
        if path == "/healthz" and method == "GET":
            await respond(send, 200, json.dumps({"status": "ok", "relay": True, "forwarded": relay.forwarded,
                                                 "batches": relay.batches, "pending": len(relay._pending)}).encode())
            return
        heartbeat = path == HEARTBEAT_PATH and method == "POST"
        if not heartbeat and not _agent_route(method, path):  # never the read API, metrics or the dashboard
            await refuse(send, 404, "not_relayed", f"{method} {path[:200]} is not an agent route; a relay passes "
                         "on heartbeats, enrolment, session handshakes and a node's action poll and acks only")
            return
        limit = _MAX_BODY if heartbeat and "x-wyneos-session" not in headers \
            and "x-wyneos-signature" not in headers and "x-wyneos-node" not in headers else _MAX_SINGLE
        body = await read_body(receive, limit)
        if body is None:
            return
        if isinstance(body, tuple):
            await refuse(send, *body)
            return
        if not heartbeat:
            query = scope.get("query_string", b"").decode("latin-1")
            status, raw, content_type = await asyncio.get_running_loop().run_in_executor(
                None, relay.proxy, method, quote(path) + (f"?{query}" if query else ""), body, headers)
            await respond(send, status, raw, content_type)
            return
        if "x-wyneos-session" in headers or "x-wyneos-signature" in headers or "x-wyneos-node" in headers:
            fields = _item_from_session(headers, body) if "x-wyneos-session" in headers \
                else _item_from_signed(headers, body)
            if fields is None:
                await refuse(send, 422, "invalid", "the heartbeat body is not UTF-8 or the sequence number not a "
                             "whole number", field="body")
                return
            item, refusal = check_item(fields)
            status, answer = refusal if item is None else (await relay.submit([item]))[0]
            await respond(send, status, json.dumps(answer).encode())
            return
        # a batch from agents or a relay further down: its items travel on unchanged, each
        # checked and bounded first (a bad one is refused alone)
        checked = check_batch(body)
        if checked is None:
            await refuse(send, 422, "invalid", f"a batch is {{\"heartbeats\": [...]}} of at most {_MAX_ITEMS} items",
                         field="body")
            return
        forwarded = await relay.submit([item for item, _ in checked if item is not None])
        got = iter(forwarded)
        results = [refusal if item is None else next(got) for item, refusal in checked]  # type: ignore[misc]
        refused = [{"index": i, **r} for i, (s, r) in enumerate(results) if s != 202]
        accepted = len(results) - len(refused)
        status = 202 if accepted or not refused else refused[0].get("status", 502)
        await respond(send, status, json.dumps({"accepted": accepted, "refused": len(refused),
                                                "results": refused[:1000], "server_time": time.time()}).encode())

    return app


def relay_config(relay: Relay, *, log_level: str = "warning", max_header_bytes: int = 32 * 1024,
                 header_timeout: float = 10.0, idle_timeout: float = 30.0, body_timeout: float = 30.0,
                 max_connections: int = 4096) -> Any:
    """The uvicorn config serving ``relay`` behind serve's connection guard
    (``service.guard``: head size and deadline, idle timeout, shedding)."""
    import uvicorn

    from wyneos_core.service.guard import guarded_protocol

    protocol = guarded_protocol(max_header_bytes=max_header_bytes, header_timeout=header_timeout,
                                max_connections=max_connections)
    return uvicorn.Config(create_relay_app(relay, body_timeout=body_timeout), http=protocol, loop="asyncio",  # as serve
                          log_level=log_level,
                          access_log=False, lifespan="on", timeout_keep_alive=idle_timeout,
                          limit_concurrency=2 * max_connections + 64, backlog=2048, server_header=False,
                          proxy_headers=False)
