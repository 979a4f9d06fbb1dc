"""``POST /v1/heartbeats`` on the lean path: session and signed heartbeats, single or batched.

Three request shapes share the route:

* **a session heartbeat**: headers ``X-Wyneos-Session``, ``X-Wyneos-Seq``,
  ``X-Wyneos-Mac``; the body is the heartbeat (see ``wyneos_core.service.sessions``).
  The answer carries ``X-Wyneos-Mac``: the session key's MAC of the answer's bytes.
* **a signed heartbeat**: the four ``X-Wyneos-*`` signature headers
  (``wyneos_core.service.identity``).
* **a batch** ``{"heartbeats": [...]}`` whose items are either session items
  (``session``, ``seq``, ``mac``, ``body``) or signed items (``node``, ``timestamp``,
  ``nonce``, ``signature``, ``body``), mixed as a relay forwards them. Every item keeps
  its own MAC or signature over its own exact body, so whoever carries the batch can
  neither forge nor alter an item: a changed item is refused alone.

Each body is decoded once into typed structs (msgspec), validated once and the
accepted heartbeats of a request are queued in one step, in order (``session_intake``).
The usual relay batch (session items only, every one accepted) is answered whole,
without a result per item (``_usual_batch``); big batches are handled off the event
loop on one thread, one after the other.

:func:`fast_route` serves the route as a plain ASGI callable in front of FastAPI (no
routing, dependency or middleware layers: the per-request cost is what limits single
heartbeats); the FastAPI route of the same path stays in the OpenAPI document and runs
the same code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from wyneos_core.service.core import Service
from wyneos_core.service.outcomes import HEARTBEAT_PATH, ItemResult, Unprocessable
from wyneos_core.service.identity import HEADER_NODE, HEADER_SIGNATURE, AuthError, SignedItem, b64e
from wyneos_core.service.session_intake import SessionIntake
from wyneos_core.service.sessions import NONCE_PATH, SESSION_PATH, HandshakeRequest, Session, answer_mac

__all__ = ["HEADER_MAC", "HEADER_SEQ", "HEADER_SESSION", "INTERNAL_ERROR", "HeartbeatAPI", "TooLarge", "fast_route",
           "parse_batch", "slow_body"]

log = logging.getLogger("wyneos.service")

HEADER_SESSION = "x-wyneos-session"
HEADER_SEQ = "x-wyneos-seq"
HEADER_MAC = "x-wyneos-mac"
_INLINE_UP_TO = 64  # batches up to this many items are processed on the event loop


class TooLarge(Exception):
    """A body or batch larger than its limit (413)."""


class _Item(msgspec.Struct, forbid_unknown_fields=True):
    body: str
    session: str | None = None
    seq: int | None = None
    mac: str | None = None
    node: str | None = None
    timestamp: str | None = None
    nonce: str | None = None
    signature: str | None = None


class _Batch(msgspec.Struct):
    heartbeats: list[_Item]
    acks: bool = False


class _SessionItem(msgspec.Struct, forbid_unknown_fields=True):
    """A session item with exactly its four fields: the usual batch (``_SessionBatch``)."""

    session: str
    seq: int
    mac: str
    body: str


class _SessionBatch(msgspec.Struct, forbid_unknown_fields=True):
    heartbeats: list[_SessionItem]
    acks: bool = False


_batch_decoder = msgspec.json.Decoder(_Batch)
_session_batch_decoder = msgspec.json.Decoder(_SessionBatch)
_handshake_decoder = msgspec.json.Decoder(HandshakeRequest)
_encode = msgspec.json.encode
_SIGNED_FIELDS = "node, timestamp, nonce, signature, body"
_SESSION_FIELDS = "session, seq, mac, body"
_MAC_HEADER = HEADER_MAC.encode()


class HeartbeatAPI:
    """The heartbeat route's work, independent of the web framework."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self._counters: dict[str, Any] = {}  # outcome code -> its labelled counter
        self.intake = SessionIntake(service)
        self.clock = time.time  # the server time of batches (tests hold it still to compare answers)

    # -- session heartbeats ----------------------------------------------------------------

    def accept_session(self, items: list[tuple[int, str, Any, Any, bytes]], now: float,
                       acks: dict[str, str] | None = None) -> tuple[dict[int, ItemResult], list[tuple[int, Session]]]:
        """Check and queue session items (``session_intake.SessionIntake.accept``)."""
        return self.intake.accept(items, now, acks)

    def session_single(self, sid: str, seq_text: str | None, tag: str | None,
                       body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """One session heartbeat: (status, answer bytes, extra headers)."""
        try:
            seq = int(seq_text) if seq_text is not None and len(seq_text) <= 20 and seq_text.isdigit() else None
        except ValueError:  # digits int() does not read (superscripts)
            seq = None
        now = self.clock()
        session = self.intake.accept_one(sid, seq, tag, body, now)  # the usual one; else item by item
        if session is None:
            refused, accepted = self.accept_session([(0, sid, seq, tag, body)], now)
            if refused:
                result = refused[0]
                self._count(result.code)
                return result.status, _encode(_error_body(result)), []
            session = accepted[0][1]
        self._count("accepted")
        node_id = session.node_id
        service = self.service
        answer: dict[str, Any] = {"accepted": 1, "seq": seq, "server_time": self.clock(),
                                  "actions": service.outbox.signed(node_id), "orchestrator_key": service.key_ref(),
                                  "neighbours": service.neighbours.signed_for(node_id)}
        relay = service.relay_desk.for_relay(node_id)  # signed actions to carry to silent peers (action_relay)
        if relay:
            answer["relay"] = relay
        data = _encode(answer)
        return 202, data, [(_MAC_HEADER, answer_mac(session.key, seq or 0, data).encode())]

    # -- signed single -----------------------------------------------------------------------

    def signed_single(self, headers: MutableMapping[str, str] | dict[str, str], body: bytes) -> tuple[int, bytes]:
        service = self.service
        now = time.time()
        item = SignedItem.from_headers(headers, body)
        result = service.accept([item], service.verify_all([item], now), now)[0]
        if result.status != 202:
            return result.status, _encode(_error_body(result))
        answer: dict[str, Any] = {"accepted": 1, "server_time": time.time(),
                                  "actions": service.outbox.signed(item.node_id),
                                  "orchestrator_key": service.key_ref(),
                                  "neighbours": service.neighbours.signed_for(item.node_id)}
        relay = service.relay_desk.for_relay(item.node_id)  # signed actions to carry to silent peers (action_relay)
        if relay:
            answer["relay"] = relay
        return 202, _encode(answer)

    # -- batches ------------------------------------------------------------------------------

    def batch(self, body: bytes) -> tuple[int, bytes]:
        """A batch of session and/or signed items: (status, answer bytes)."""
        now = self.clock()
        usual = self._usual_batch(body, now)
        return usual if usual is not None else self._batch_items(body, now)

    def _batch_items(self, body: bytes, now: float) -> tuple[int, bytes]:
        """``batch`` item by item (any batch ``_usual_batch`` left)."""
        items, refused, want_acks = parse_batch(body, self.settings.max_batch)
        acks: dict[str, str] | None = {} if want_acks else None
        session_items: list[tuple[int, str, Any, Any, bytes]] = []
        signed: list[tuple[int, SignedItem]] = []
        for i, item in enumerate(items):
            if type(item) is tuple:
                session_items.append((i, *item))
            elif item is not None:
                signed.append((i, item))  # type: ignore[arg-type]
        tally: dict[str, int] = {}
        accepted = 0
        if session_items:
            session_refused, taken = self.accept_session(session_items, now, acks)
            refused.update(session_refused)
            accepted += len(taken)
            if taken:
                tally["accepted"] = len(taken)
            for r in session_refused.values():
                tally[r.code] = tally.get(r.code, 0) + 1
        self._tally(tally)
        if signed:
            service = self.service
            chosen = [s for _, s in signed]
            for (i, _), r in zip(signed, service.accept(chosen, service.verify_all(chosen, now), now)):
                if r.status == 202:
                    accepted += 1
                else:
                    refused[i] = r
        if accepted:
            self.service.applier.wake()
        listed = [{"index": i, **refused[i].to_dict()} for i in sorted(refused)[:1000]]
        status = 202 if accepted or not refused else listed[0]["status"]
        # the acknowledgements cover ``now`` as the server time (a relay cannot move it)
        answer = {"accepted": accepted, "refused": len(refused), "results": listed,
                  "server_time": now if acks is not None else self.clock()}
        if acks is not None:
            answer["acks"] = acks
        return status, _encode(answer)

    def _usual_batch(self, body: bytes, now: float) -> tuple[int, bytes] | None:
        """The usual relay batch (session items only, each with its four fields, every one
        accepted: ``SessionIntake.accept_usual``) answered at once; None, having changed
        nothing, for any other batch (``batch`` then looks at it item by item)."""
        try:
            batch = _session_batch_decoder.decode(body)
            items = batch.heartbeats
            if not items or len(items) > self.settings.max_batch:
                return None
            bodies = [item.body.encode() for item in items]
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeEncodeError):
            return None
        taken = self.intake.accept_usual([item.session for item in items], [item.seq for item in items],
                                         [item.mac for item in items], bodies, now, batch.acks)
        if taken is None:
            return None
        count, acks = taken
        self.service.applier.wake()  # applied to the registry's columns now, not at the next tick
        self._count("accepted", count)
        answer: dict[str, Any] = {"accepted": count, "refused": 0, "results": [],
                                  "server_time": now if acks is not None else self.clock()}
        if acks is not None:
            answer["acks"] = acks
        return 202, _encode(answer)

    # -- session handshake ------------------------------------------------------------------

    def nonce(self) -> tuple[int, bytes]:
        return 200, _encode({"nonce": self.service.sessions.new_nonce(), "server_time": time.time()})

    def open_session(self, body: bytes, source: str | None = None) -> tuple[int, bytes]:
        """``POST /v1/sessions``: (status, answer bytes); see ``sessions.SessionTable.open``
        (``source``: the client address, whose failed handshakes are rate limited)."""
        service = self.service
        try:
            asked = _handshake_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise Unprocessable("body", str(exc)) from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise Unprocessable("body", f"not JSON ({exc})") from None
        try:
            envelope = service.sessions.open(asked, source=source)
        except AuthError as exc:
            service.metrics.sessions.labels(exc.code).inc()
            raise
        service.metrics.sessions.labels("opened").inc()
        key = service.okey
        return 201, _encode({"session": envelope, "orchestrator_key": b64e(key.public_raw),
                             "orchestrator_fingerprint": key.fingerprint, "server_time": time.time()})

    def _tally(self, tally: dict[str, int]) -> None:
        for code, count in tally.items():
            self._count(code, count)

    def _count(self, code: str, count: int = 1) -> None:
        """Count heartbeats by outcome (the labelled counters are kept: ``labels`` costs)."""
        child = self._counters.get(code)
        if child is None:
            child = self._counters[code] = self.service.metrics.heartbeats.labels(code)
        child.inc(count)

    # -- one entry for every framework ---------------------------------------------------------

    async def handle(self, get_header: Callable[[str], str | None], body: bytes, path: str = HEARTBEAT_PATH,
                     source: str | None = None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Answer a POST to ``path`` whose body was read: (status, body, extra headers);
        ``source`` is the client's address."""
        try:
            if path == NONCE_PATH:
                return (*self.nonce(), [])
            if path == SESSION_PATH:  # Ed25519, X25519, HKDF, a signature: about 0.3 ms, here
                return (*self.open_session(body, source), [])
            if get_header(HEADER_SESSION) is not None:
                return self.handle_session(get_header, body)
            if get_header(HEADER_SIGNATURE) is not None or get_header(HEADER_NODE) is not None:
                headers = {h: v for h in ("x-wyneos-node", "x-wyneos-timestamp", "x-wyneos-nonce",
                                          "x-wyneos-signature") if (v := get_header(h)) is not None}
                status, data = self.signed_single(headers, body)
                return status, data, []
            if len(body) <= 64 * 200:  # small batch: cheaper here than a thread hop
                status, data = self.batch(body)
            else:  # a big batch is handled off the event loop: the usual one on one thread, one after the
                # other; any other (signed items verified on every core) on the pool, as before
                loop = asyncio.get_running_loop()
                now = self.clock()
                usual = await loop.run_in_executor(_lane(), self._usual_batch, body, now)
                status, data = usual if usual is not None else \
                    await loop.run_in_executor(None, self._batch_items, body, now)
            return status, data, []
        except (AuthError, Unprocessable, TooLarge) as exc:
            return _refusal(exc)

    def handle_session(self, get_header: Callable[[str], str | None],
                       body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Answer a session heartbeat whose body was read: (status, body, extra headers)."""
        try:
            return self.session_single(get_header(HEADER_SESSION), get_header(HEADER_SEQ),  # type: ignore[arg-type]
                                       get_header(HEADER_MAC), body)
        except (AuthError, Unprocessable, TooLarge) as exc:
            return _refusal(exc)

    def limit(self, get_header: Callable[[str], str | None], path: str = HEARTBEAT_PATH) -> int:
        """The body size limit of a request with these headers."""
        single = path != HEARTBEAT_PATH or get_header(HEADER_SESSION) is not None or get_header(HEADER_SIGNATURE) is not None \
            or get_header(HEADER_NODE) is not None
        return self.settings.max_request_bytes if single else self.settings.max_body_bytes


_lanes: list[ThreadPoolExecutor] = []
_lanes_lock = threading.Lock()


def _lane() -> ThreadPoolExecutor:
    """The one thread that big usual batches (``_usual_batch``) are handled on, one after
    the other. They all take the session table's lock and the GIL: several threads at
    once only waited for each other (1-4 µs more server CPU per batched heartbeat in alternating runs,
    docs/performance.md "Heartbeat API")."""
    if not _lanes:
        with _lanes_lock:
            if not _lanes:
                _lanes.append(ThreadPoolExecutor(1, thread_name_prefix="wyneos-batches"))
    return _lanes[0]


BatchEntry = tuple[str, int, str, bytes] | SignedItem | None


def parse_batch(body: bytes, max_batch: int) -> tuple[list[BatchEntry], dict[int, ItemResult], bool]:
    """The items of a batch, in order: ``(session id, seq, mac, body bytes)`` for a
    session item, a ``SignedItem`` for a signed one, None for a malformed one (its
    refusal in the second value, by index); third, whether acknowledgements of the
    session items were asked for (``"acks": true``, as relays do).

    :raises AuthError: (401) not a batch at all; :raises Unprocessable: not JSON, or
        ``heartbeats`` not a list; :raises TooLarge: more than ``max_batch`` items.
    """
    try:
        batch = _batch_decoder.decode(body)
        items: list[Any] = batch.heartbeats
        want_acks = batch.acks
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        items, want_acks = _loose_items(body, max_batch)  # one bad item, or no batch at all: look closer
    if len(items) > max_batch:
        raise TooLarge(f"batch of {len(items)} heartbeats is larger than the limit of {max_batch}")
    out: list[BatchEntry] = []
    early: dict[int, ItemResult] = {}
    for i, item in enumerate(items):
        entry: BatchEntry = None
        if type(item) is _Item:
            try:
                raw = item.body.encode()
            except UnicodeEncodeError:  # lone surrogates cannot be the MACed or signed bytes
                raw = None
            if raw is None:
                pass
            elif item.session is not None:
                if item.node is None and item.signature is None and item.seq is not None and item.mac is not None:
                    entry = (item.session, item.seq, item.mac, raw)
            elif item.node is not None and item.timestamp is not None and item.nonce is not None \
                    and item.signature is not None and item.seq is None and item.mac is None:
                entry = SignedItem(item.node, item.timestamp, item.nonce, item.signature, raw)
        if entry is None:
            early[i] = ItemResult(401, "malformed", f"heartbeats[{i}]: needs string fields {_SIGNED_FIELDS} "
                                  f"(signed) or {_SESSION_FIELDS} (session), body valid Unicode",
                                  field=f"heartbeats[{i}]")
        out.append(entry)
    return out, early, want_acks


def _loose_items(body: bytes, max_batch: int) -> tuple[list[Any], bool]:
    """A batch that did not decode as a whole: its items one by one (bad ones as they are)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unprocessable("body", f"not JSON ({exc})") from None
    except RecursionError:
        raise Unprocessable("body", "JSON nested too deeply") from None
    if not isinstance(data, dict) or "heartbeats" not in data:
        raise AuthError(401, "unsigned request: a single heartbeat needs the X-Wyneos-* signature or session "
                             "headers, a batch is {\"heartbeats\": [...]}", "unsigned")
    raw = data["heartbeats"]
    if not isinstance(raw, list):
        raise Unprocessable("heartbeats", "expected a list")
    if len(raw) > max_batch:
        raise TooLarge(f"batch of {len(raw)} heartbeats is larger than the limit of {max_batch}")
    out: list[Any] = []
    for entry in raw:
        try:
            out.append(msgspec.convert(entry, _Item))
        except msgspec.ValidationError:
            out.append(None)
    return out, data.get("acks") is True


#: the answer to a request whose handling failed (logged)
INTERNAL_ERROR = _encode({"status": 500, "code": "internal", "error": "internal error"})


def slow_body(deadline: float) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The answer to a request whose body did not arrive within ``deadline`` seconds."""
    return 408, _encode({"status": 408, "code": "body_timeout", "error": f"the body did not arrive within "
                         f"{deadline:g} s (service.body_timeout)"}), [(b"connection", b"close")]


def _refusal(exc: AuthError | Unprocessable | TooLarge) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    if isinstance(exc, AuthError):
        return exc.status, _encode({"status": exc.status, "code": exc.code, "error": exc.reason}), []
    if isinstance(exc, Unprocessable):
        return 422, _encode({"status": 422, "code": "invalid", "error": exc.reason, "field": exc.field}), []
    return 413, _encode({"status": 413, "code": "too_large", "error": str(exc)}), []


def _error_body(result: ItemResult) -> dict[str, Any]:
    out: dict[str, Any] = {"status": result.status, "code": result.code, "error": result.error}
    if result.field:
        out["field"] = result.field
    return out


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def fast_route(api: HeartbeatAPI) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """``POST /v1/heartbeats`` (and the two session handshake routes) as a plain ASGI
    callable (see the module docstring)."""

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers = scope["headers"]
        headers: dict[str, str] = {}
        for name, value in raw_headers:
            if name.startswith(b"x-wyneos-") or name == b"content-length":
                headers[name.decode("latin-1")] = value.decode("latin-1")
        get = headers.get
        path = scope["path"]
        limit = api.limit(get, path)
        status, data, extra = 0, b"", []
        length = get("content-length")
        if length is not None and (not length.isdigit() or len(length) > 15):
            status, data = 422, _encode({"status": 422, "code": "invalid", "error": "content-length: not a number",
                                         "field": "content-length"})
        elif length is not None and int(length) > limit:
            status, data = 413, _encode({"status": 413, "code": "too_large",
                                         "error": f"body of {int(length)} bytes is larger than the limit of {limit}"})
        else:
            chunks: list[bytes] = []
            size = 0
            more = True
            deadline = api.settings.body_timeout
            try:
                async with asyncio.timeout(deadline):
                    while more:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            return
                        chunk = message.get("body", b"")
                        size += len(chunk)
                        if size > limit:
                            status, data = 413, _encode({"status": 413, "code": "too_large",
                                                         "error": f"body is larger than the limit of {limit} bytes"})
                            break
                        chunks.append(chunk)
                        more = message.get("more_body", False)
            except TimeoutError:
                status, data, extra = slow_body(deadline)
            if not status:
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                try:
                    client = scope.get("client")
                    status, data, extra = await api.handle(get, body, path, client[0] if client else None)
                except Exception:  # noqa: BLE001 - answered as 500, logged
                    log.exception("heartbeat route failed")
                    status, data = 500, INTERNAL_ERROR
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode()), *extra]})
        await send({"type": "http.response.body", "body": data})

    return route
