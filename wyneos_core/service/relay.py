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
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Relay", "RelayError", "create_relay_app"]

log = logging.getLogger("wyneos.relay")

HEARTBEAT_PATH = "/v1/heartbeats"
_PASSED_HEADERS = ("content-type", "x-wyneos-node", "x-wyneos-timestamp", "x-wyneos-nonce", "x-wyneos-signature",
                   "x-wyneos-session", "x-wyneos-seq", "x-wyneos-mac")
_MAX_BODY = 8 * 1024 * 1024
_MAX_SINGLE = 64 * 1024


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
    :param timeout: seconds to wait for the upstream.
    :param alter: test hook only: a function given each forwarded batch's items (JSON
        bytes) that may return them changed (what a hostile relay would do).
    """

    def __init__(self, upstream: str, *, batch: int = 1000, flush: float = 0.05, max_pending: int = 100_000,
                 timeout: float = 30.0, alter: Callable[[list[bytes]], list[bytes]] | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RelayError(f"upstream URL {upstream!r} must look like http://HOST:PORT")
        if not 1 <= batch <= 1000 or not flush > 0 or max_pending < 1:
            raise RelayError("batch must be 1-1000, flush above 0, max_pending at least 1")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.batch = batch
        self.flush = flush
        self.max_pending = max_pending
        self.timeout = timeout
        self.alter = alter
        self.forwarded = 0
        self.batches = 0
        self._pending: list[tuple[bytes, asyncio.Future[tuple[int, dict[str, Any]]]]] = []
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
        for attempt in (0, 1):
            conn = self._connection(which)
            try:
                conn.request(method, path, body=body or None, headers=headers)
                response = conn.getresponse()
                return response.status, response.read(), response.getheaders()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
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
        body = b'{"acks":true,"heartbeats":[' + b",".join(items) + b"]}"
        try:
            status, raw, _ = self._send("_conn", "POST", HEARTBEAT_PATH, body, {"content-type": "application/json"})
        except (OSError, http.client.HTTPException) as exc:
            return [_answer(503, "upstream_unreachable", f"the relay cannot reach the orchestrator: {exc}")] * len(items)
        try:
            data = json.loads(raw)
        except ValueError:
            data = {}
        if not isinstance(data, dict) or "results" not in data:  # the whole batch was refused
            code = data.get("code", "upstream_error") if isinstance(data, dict) else "upstream_error"
            error = data.get("error", "") if isinstance(data, dict) else ""
            return [_answer(status if status >= 400 else 502, code, f"the orchestrator refused the batch: {error}")] \
                * len(items)
        refused = {r.get("index"): r for r in data["results"] if isinstance(r, dict)}
        acks = data.get("acks") or {}
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
                out.append((int(r.get("status", 502)), {k: v for k, v in r.items() if k != "index"}))
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
        for _, future in self._pending:
            if not future.done():
                future.set_result(_answer(503, "relay_stopping", "the relay is stopping"))
        self._pending.clear()

    async def submit(self, items: list[bytes]) -> list[tuple[int, dict[str, Any]]]:
        """Queue items for the next batches; their results, in order."""
        if len(self._pending) + len(items) > self.max_pending:
            return [_answer(503, "relay_full", f"the relay holds {self.max_pending} heartbeats already; retry later")] \
                * len(items)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures))
        assert self._wake is not None
        self._wake.set()
        return list(await asyncio.gather(*futures))

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
                chunk, self._pending = self._pending[:self.batch], self._pending[self.batch:]
                try:
                    results = await loop.run_in_executor(None, self.forward, [item for item, _ in chunk])
                except Exception as exc:  # noqa: BLE001 - every waiting agent gets an answer
                    log.exception("forwarding a batch failed")
                    results = [_answer(502, "relay_error", f"{type(exc).__name__}: {exc}")] * len(chunk)
                for (_, future), result in zip(chunk, results):
                    if not future.done():
                        future.set_result(result)


def _item_from_session(headers: dict[str, str], body: bytes) -> bytes | None:
    seq = headers.get("x-wyneos-seq", "")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not seq.isdigit() or len(seq) > 20:
        return None
    return json.dumps({"session": headers["x-wyneos-session"], "seq": int(seq), "mac": headers.get("x-wyneos-mac", ""),
                       "body": text}, separators=(",", ":")).encode()


def _item_from_signed(headers: dict[str, str], body: bytes) -> bytes | None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return json.dumps({"node": headers.get("x-wyneos-node", ""), "timestamp": headers.get("x-wyneos-timestamp", ""),
                       "nonce": headers.get("x-wyneos-nonce", ""), "signature": headers.get("x-wyneos-signature", ""),
                       "body": text}, separators=(",", ":")).encode()


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def create_relay_app(relay: Relay) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The relay as an ASGI application."""

    async def respond(send: Send, status: int, data: bytes, content_type: str = "application/json") -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

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
        limit = _MAX_BODY if path == HEARTBEAT_PATH and "x-wyneos-session" not in headers \
            and "x-wyneos-signature" not in headers else _MAX_SINGLE
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                status, answer = _answer(413, "too_large", f"body is larger than the limit of {limit} bytes")
                await respond(send, status, json.dumps(answer).encode())
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if path == "/healthz" and method == "GET":
            await respond(send, 200, json.dumps({"status": "ok", "relay": True, "forwarded": relay.forwarded,
                                                 "batches": relay.batches, "pending": len(relay._pending)}).encode())
            return
        if path != HEARTBEAT_PATH or method != "POST":
            query = scope.get("query_string", b"").decode("latin-1")
            status, raw, content_type = await asyncio.get_running_loop().run_in_executor(
                None, relay.proxy, method, path + (f"?{query}" if query else ""), body, headers)
            await respond(send, status, raw, content_type)
            return
        if "x-wyneos-session" in headers:
            item = _item_from_session(headers, body)
        elif "x-wyneos-signature" in headers or "x-wyneos-node" in headers:
            item = _item_from_signed(headers, body)
        else:  # a batch from agents or a relay further down: its items travel on unchanged
            try:
                data = json.loads(body)
                items = [json.dumps(x, separators=(",", ":")).encode() for x in data["heartbeats"]]
                if not isinstance(data["heartbeats"], list) or len(items) > 20_000:
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                status, answer = _answer(422, "invalid", "a batch is {\"heartbeats\": [...]} of at most 20000 items",
                                         field="body")
                await respond(send, status, json.dumps(answer).encode())
                return
            results = await relay.submit(items)
            refused = [{"index": i, **r} for i, (s, r) in enumerate(results) if s != 202]
            accepted = len(results) - len(refused)
            status = 202 if accepted or not refused else refused[0].get("status", 502)
            await respond(send, status, json.dumps({"accepted": accepted, "refused": len(refused),
                                                    "results": refused[:1000], "server_time": time.time()}).encode())
            return
        if item is None:
            status, answer = _answer(422, "invalid", "the heartbeat body is not UTF-8 or the sequence number not a "
                                     "whole number", field="body")
        else:
            status, answer = (await relay.submit([item]))[0]
        await respond(send, status, json.dumps(answer).encode())

    return app
