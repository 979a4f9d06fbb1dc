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

Each body is decoded once into typed structs (msgspec), validated once
(``Registry.check``) and the accepted heartbeats of a request are queued in one step,
in order, as ``CheckedHeartbeat`` objects the tick applies without checking again.

:func:`fast_route` serves the route as a plain ASGI callable in front of FastAPI (no
routing, dependency or middleware layers: the per-request cost is what limits single
heartbeats); the FastAPI route of the same path stays in the OpenAPI document and runs
the same code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec
import numpy as np

from wyneos_core.intake import BatchError, CheckedHeartbeat, DecodeError, HeartbeatBody, HeartbeatColumns, QueueFull, \
    decode_body
from wyneos_core.registry import RESERVED_METADATA, HeartbeatError
from wyneos_core.service.core import HEARTBEAT_PATH, ItemResult, Service, Unprocessable
from wyneos_core.service.core import _observations  # the same parsing as for signed bodies
from wyneos_core.service.identity import HEADER_NODE, HEADER_SIGNATURE, AuthError, SignedItem, b64e
from wyneos_core.service.sessions import NONCE_PATH, SESSION_PATH, HandshakeRequest, Session, ack_mac, answer_mac

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


_batch_decoder = msgspec.json.Decoder(_Batch)
_body_decoder = msgspec.json.Decoder(HeartbeatBody)
_NAN = float("nan")
_FEW = 8  # session batches of up to this many usual heartbeats are queued as objects, more as columns
_handshake_decoder = msgspec.json.Decoder(HandshakeRequest)
_encode = msgspec.json.encode
_SIGNED_FIELDS = "node, timestamp, nonce, signature, body"
_SESSION_FIELDS = "session, seq, mac, body"
_MAC_HEADER = HEADER_MAC.encode()


_EXACT = frozenset({str, bool, int, type(None)})  # equal values of these types encode the same


def _holds(stored: Any, metadata: dict[str, Any], encoded: bytes) -> bool:
    """Whether ``stored`` (a node's metadata mapping, or None) holds every key of
    ``metadata`` with the same value as encoded (``encoded``: ``metadata`` encoded)."""
    if stored is None:
        return False
    for key, value in metadata.items():
        held = stored.get(key, _holds)
        kind = type(value)
        if type(held) is not kind:
            return False
        if kind not in _EXACT:  # floats (``0.0`` and ``-0.0``), lists, mappings: compared encoded
            break
        if held != value:
            return False
    else:
        return True
    try:
        return all(k in stored for k in metadata) and _encode({k: stored[k] for k in metadata}) == encoded
    except (TypeError, msgspec.EncodeError):  # a value msgspec cannot encode: never equal
        return False


class HeartbeatAPI:
    """The heartbeat route's work, independent of the web framework."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self._counters: dict[str, Any] = {}  # outcome code -> its labelled counter

    # -- session heartbeats ----------------------------------------------------------------

    def accept_session(self, items: list[tuple[int, str, Any, Any, bytes]], now: float,
                       acks: dict[str, str] | None = None) -> tuple[dict[int, ItemResult], list[tuple[int, Session]]]:
        """Check and queue session items ``(index, session id, seq, mac, body)`` in order:
        the refusals by index, and the items accepted (index, session), in order.

        All of a request's accepted items are queued together; nothing is recorded
        (sequence numbers, rate) unless they were queued. ``acks``, when given, gets
        for each accepted item the session key's MAC of its acknowledgement
        (``sessions.ack_mac``, covering ``now`` as the server time), by index: what a
        relay passes on to the agent.

        Metadata that repeats the session's last accepted metadata and that the node
        already holds, value for value (as encoded: ``1``, ``1.0`` and ``true`` differ),
        would change nothing when applied: the heartbeat is queued without it, so neither
        its check (its JSON size and depth) nor the tick's merge is paid again. Only
        small bodies qualify (their metadata cannot exceed ``max_metadata_bytes``), never
        reserved keys (refused as before). Likewise the key fingerprint is left out when the
        node has it already. A heartbeat left with a timestamp and a load only is applied
        by the tick over the registry's columns (``Registry.accept_all``).
        """
        service = self.service
        table = service.sessions
        with table.lock:
            fast = self._as_columns(items, now)
            if fast is not None:
                return self._queued(items, now, acks, *fast)
            return self._as_objects(items, now, acks)

    def _as_columns(self, items: list[tuple[int, str, Any, Any, bytes]], now: float
                    ) -> tuple[dict[int, ItemResult], list[tuple[int, Session]], dict[str, list[Any]],
                               HeartbeatColumns | list[CheckedHeartbeat]] | None:
        """``accept_session`` for the usual batch, as one ``HeartbeatColumns`` (caller holds
        the lock): every item whose session checks out is a heartbeat of a registered node
        with a timestamp, a load and at most metadata that repeats itself (see
        ``accept_session``), each node once. None as soon as an item is anything else (its
        body not valid, observations, metrics, a licence reference, new metadata or key
        fingerprint, a timestamp or load the registry refuses): then the whole request goes
        item by item (``_as_objects``), which answers exactly as before. Nothing is changed
        here (the sequence numbers and rates are recorded when queued). A few heartbeats
        (a single one) are checked on Python floats and queued as ``CheckedHeartbeat``
        objects of the common shape (the tick applies those over the columns too)."""
        service = self.service
        check = service.sessions.check
        registry = service.orchestrator.registry
        nodes = registry.table
        slot_of = nodes.index.get
        held_fp = nodes.fingerprint
        held_meta = nodes.metadata
        fingerprint = service.keys.fingerprint
        small = registry.max_metadata_bytes // 6
        decode = _body_decoder.decode
        refused: dict[int, ItemResult] = {}
        pending: dict[str, list[Any]] = {}  # session id -> [last seq, count, session, last metadata]
        accepted: list[tuple[int, Session]] = []
        ids: list[str] = []
        slots: list[int] = []
        stamps: list[float] = []
        loads: list[float] = []
        for index, sid, seq, tag, body in items:
            try:
                session = check(sid, seq, tag, body, now, pending)
            except AuthError as exc:
                refused[index] = ItemResult(exc.status, exc.code, exc.reason)
                continue
            node_id = session.node_id
            slot = slot_of(node_id)
            try:
                data = decode(body)
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                return None
            if slot is None or (data.node_id is not None and data.node_id != node_id) \
                    or data.observations is not None or data.metrics is not None or data.licence_ref is not None:
                return None
            fp = fingerprint(node_id)
            if fp is not None and held_fp[slot] != fp:
                return None
            earlier = pending.get(sid)
            metadata = data.metadata
            if metadata:
                meta = _encode(metadata)
                if meta != (session.meta if earlier is None else earlier[3]) or len(body) > small \
                        or not RESERVED_METADATA.isdisjoint(metadata) or not _holds(held_meta[slot], metadata, meta):
                    return None
            if earlier is None:
                pending[sid] = [seq, 1, session, session.meta]
            else:
                earlier[0] = seq
                earlier[1] += 1
            accepted.append((index, session))
            ids.append(node_id)
            slots.append(slot)
            stamps.append(now if data.timestamp is None else data.timestamp)
            load = data.load
            loads.append(_NAN if load is None else load)
        if not accepted:
            return refused, accepted, pending, HeartbeatColumns([], [])
        if len(set(ids)) != len(ids):  # a node twice: in order, item by item
            return None
        skew = registry.max_clock_skew
        if len(ids) <= _FEW:  # a few: the same checks on Python floats (numpy's overhead would dominate)
            limit = service.orchestrator.clock() + skew
            top = registry.max_load
            seen = nodes.last_seen
            queued: list[CheckedHeartbeat] = []
            for node_id, slot, stamp, value in zip(ids, slots, stamps, loads):
                try:
                    last = float(seen[slot])
                except IndexError:  # the table changed meanwhile (the tick thread): the careful way
                    return None
                if not (math.isfinite(stamp) and stamp <= limit and not stamp < last - skew
                        and (value != value or 0 <= value <= top)):
                    return None
                queued.append(CheckedHeartbeat(node_id, stamp, None if value != value else value, {}))
            return refused, accepted, pending, queued
        ts = np.array(stamps, dtype=np.float64)
        load = np.array(loads, dtype=np.float64)
        try:
            last = nodes.last_seen[np.array(slots, dtype=np.int64)]
        except IndexError:  # the table changed meanwhile (the tick thread): the careful way
            return None
        with np.errstate(invalid="ignore"):
            fine = np.isfinite(ts) & (ts <= service.orchestrator.clock() + skew) & ~(ts < last - skew) \
                & (np.isnan(load) | ((load >= 0) & (load <= registry.max_load)))
        if not fine.all():  # its answer names the field: item by item
            return None
        try:
            batch = HeartbeatColumns(ids, ts, load)
        except BatchError:
            return None
        return refused, accepted, pending, batch

    def _as_objects(self, items: list[tuple[int, str, Any, Any, bytes]], now: float,
                    acks: dict[str, str] | None) -> tuple[dict[int, ItemResult], list[tuple[int, Session]]]:
        """``accept_session`` item by item, each a ``CheckedHeartbeat`` (caller holds the lock)."""
        service = self.service
        table = service.sessions
        orch = service.orchestrator
        registry = orch.registry
        check = registry.check
        lookup = registry.get
        small = registry.max_metadata_bytes // 6  # JSON re-encoded is at most 4.5x its bytes
        fingerprint = service.keys.fingerprint
        orch_now = orch.clock()
        refused: dict[int, ItemResult] = {}
        pending: dict[str, list[Any]] = {}  # session id -> [last seq, count, session, last metadata]
        accepted: list[tuple[int, Session]] = []
        queued: list[CheckedHeartbeat] = []
        for index, sid, seq, tag, body in items:
            try:
                session = table.check(sid, seq, tag, body, now, pending)
            except AuthError as exc:
                refused[index] = ItemResult(exc.status, exc.code, exc.reason)
                continue
            node_id = session.node_id
            meta = None
            try:
                data = decode_body(body)
                if data.node_id is not None and data.node_id != node_id:
                    raise AuthError(403, f"heartbeat for {data.node_id!r} in a session of {node_id!r}",
                                    "node_mismatch")
                node = lookup(node_id)
                fp = fingerprint(node_id)
                if node is not None and fp is not None and node.fingerprint == fp:
                    fp = None  # the node has it: nothing to set (the tick's column-wise path takes it)
                metadata = data.metadata
                if metadata:
                    meta = _encode(metadata)
                    earlier = pending.get(sid)
                    if meta == (session.meta if earlier is None else earlier[3]) and len(body) <= small \
                            and RESERVED_METADATA.isdisjoint(metadata) and _holds(None if node is None else node.metadata, metadata, meta):
                        metadata = None
                # witness observations: MACed with the session key, so authenticated to the
                # orchestrator as a signature would make them (``signed``)
                observations = () if data.observations is None else _observations(node_id, data.observations)
                hb = CheckedHeartbeat(node_id, now if data.timestamp is None else data.timestamp, data.load,
                                      {} if metadata is None else metadata, fp, data.licence_ref,
                                      observations, data.metrics)
                check(hb, orch_now)
            except (DecodeError, Unprocessable, HeartbeatError) as exc:
                refused[index] = ItemResult(422, "invalid", exc.reason, node_id, exc.field)
                continue
            except AuthError as exc:
                refused[index] = ItemResult(exc.status, exc.code, exc.reason, node_id)
                continue
            earlier = pending.get(sid)
            if earlier is None:
                pending[sid] = [seq, 1, session, meta if meta is not None else session.meta]
            else:
                earlier[0] = seq
                earlier[1] += 1
                if meta is not None:
                    earlier[3] = meta
            accepted.append((index, session))
            queued.append(hb)
        return self._queued(items, now, acks, refused, accepted, pending, queued)

    def _queued(self, items: list[tuple[int, str, Any, Any, bytes]], now: float, acks: dict[str, str] | None,
                refused: dict[int, ItemResult], accepted: list[tuple[int, Session]], pending: dict[str, list[Any]],
                queued: list[CheckedHeartbeat] | HeartbeatColumns
                ) -> tuple[dict[int, ItemResult], list[tuple[int, Session]]]:
        """Queue what ``accept_session`` accepted, all of it or nothing, and record it (caller
        holds the lock)."""
        if not accepted:
            return refused, []
        service = self.service
        try:
            if service.ha is not None and not service.ha.leading:  # a follower: on to the leader
                raw = {i: (sid, seq, tag, body) for i, sid, seq, tag, body in items}
                service.ha.forward_sessions([raw[i] for i, _ in accepted])  # MACs intact (tickets)
            elif isinstance(queued, list):
                service.orchestrator.intake.put_many(queued)
            else:
                service.orchestrator.intake.put_columns(queued)
        except QueueFull as exc:
            for index, session in accepted:
                refused[index] = ItemResult(503, "queue_full", str(exc), session.node_id)
            return refused, []
        commit = service.sessions.commit
        for seq, count, session, meta in pending.values():
            commit(session, seq, now, count)
            session.meta = meta
        if acks is not None:
            seqs = {i: seq for i, _, seq, _, _ in items}
            for index, session in accepted:
                acks[str(index)] = ack_mac(session.key, seqs[index], now)
        return refused, accepted

    def session_single(self, sid: str, seq_text: str | None, tag: str | None,
                       body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """One session heartbeat: (status, answer bytes, extra headers)."""
        try:
            seq = int(seq_text) if seq_text is not None and len(seq_text) <= 20 and seq_text.isdigit() else None
        except ValueError:  # digits int() does not read (superscripts)
            seq = None
        refused, accepted = self.accept_session([(0, sid, seq, tag, body)], time.time())
        if refused:
            result = refused[0]
            self._count(result.code)
            return result.status, _encode(_error_body(result)), []
        self._count("accepted")
        session = accepted[0][1]
        node_id = session.node_id
        service = self.service
        answer: dict[str, Any] = {"accepted": 1, "seq": seq, "server_time": time.time(),
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
        now = time.time()
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
        listed = [{"index": i, **refused[i].to_dict()} for i in sorted(refused)[:1000]]
        status = 202 if accepted or not refused else listed[0]["status"]
        # the acknowledgements cover ``now`` as the server time (a relay cannot move it)
        answer = {"accepted": accepted, "refused": len(refused), "results": listed,
                  "server_time": now if acks is not None else time.time()}
        if acks is not None:
            answer["acks"] = acks
        return status, _encode(answer)

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
            else:  # parsing and verifying a big batch keep off the event loop
                status, data = await asyncio.get_running_loop().run_in_executor(None, self.batch, body)
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
