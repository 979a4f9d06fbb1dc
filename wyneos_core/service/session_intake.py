"""Session heartbeats into the intake queue: checked once, queued in one step per request.

``SessionIntake.accept`` takes the session items of a request (a single heartbeat, or a
batch as a relay forwards it): each item's session, MAC, sequence number and rate are
checked (``sessions.SessionTable.check``), its body decoded once (msgspec) and checked
against the registry, and the accepted items are queued together. The usual batch goes
as one ``HeartbeatColumns`` batch with the registry's checks over whole columns
(``_as_columns``); any other goes item by item as ``CheckedHeartbeat`` objects
(``_as_objects``), with the same answers (``tests/test_heartbeat_intake_columns.py``).
A relay's batch whose every item passes (``accept_usual``) is taken in a few passes over
the whole batch instead of an item at a time: the sessions checked at once
(``SessionTable.check_all``), the bodies decoded in one list, the registry's checks with
numpy, every step all-or-nothing; any other batch goes the way above
(``tests/test_heartbeat_batch_fast.py`` compares the two, answer and state).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np

from wyneos_core.intake import BatchError, CheckedHeartbeat, DecodeError, HeartbeatBody, HeartbeatColumns, QueueFull, \
    decode_body
from wyneos_core.registry import RESERVED_METADATA, HeartbeatError
from wyneos_core.service.core import Service
from wyneos_core.service.outcomes import ItemResult, Unprocessable
from wyneos_core.service.signed_intake import observations  # the same parsing as for signed bodies
from wyneos_core.service.identity import AuthError
from wyneos_core.service.sessions import Session, ack_mac, ack_macs

__all__ = ["SessionIntake"]

_body_decoder = msgspec.json.Decoder(HeartbeatBody)
_encode = msgspec.json.encode
_NAN = float("nan")
_FEW = 8  # session batches of up to this many usual heartbeats are queued as objects, more as columns

_EXACT = frozenset({str, bool, int, type(None)})  # equal values of these types encode the same


def _other(given: Any, own: Any) -> bool:
    """Whether ``given`` is set and not ``own``."""
    return given is not None and given != own


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


class SessionIntake:
    """Session items of a request into the orchestrator's intake queue (see the module)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def accept(self, items: list[tuple[int, str, Any, Any, bytes]], now: float,
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

    def accept_one(self, sid: str, seq: Any, tag: Any, body: bytes, now: float) -> Session | None:
        """A single session heartbeat of the usual shape accepted and queued: its session.
        The same checks as ``accept`` (``_as_columns`` on one item), without its lists and
        pending records: a single heartbeat's cost is mostly per request. None, having
        changed nothing, for any other (refused, a body ``_as_columns`` would not take, a
        follower, a full queue): then ``accept`` looks at it and answers
        (``tests/test_heartbeat_single_fast.py`` compares the two)."""
        service = self.service
        if service.ha is not None and not service.ha.leading:
            return None
        table = service.sessions
        registry = service.orchestrator.registry
        nodes = registry.table
        with table.lock:
            try:
                session = table.check(sid, seq, tag, body, now)
            except AuthError:
                return None
            node_id = session.node_id
            slot = nodes.index.get(node_id)
            try:
                data = _body_decoder.decode(body)
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                return None
            if slot is None or (data.node_id is not None and data.node_id != node_id) \
                    or data.observations is not None or data.metrics is not None or data.licence_ref is not None:
                return None
            fp = service.keys.fingerprint(node_id)
            if fp is not None and nodes.fingerprint[slot] != fp:
                return None
            metadata = data.metadata
            if metadata:
                meta = _encode(metadata)
                if meta != session.meta or len(body) > registry.max_metadata_bytes // 6 \
                        or not RESERVED_METADATA.isdisjoint(metadata) or not _holds(nodes.metadata[slot], metadata, meta):
                    return None
            stamp = now if data.timestamp is None else data.timestamp
            value = data.load
            skew = registry.max_clock_skew
            try:
                last = float(nodes.last_seen[slot])
            except IndexError:  # the table changed meanwhile (the tick thread): the careful way
                return None
            if not (math.isfinite(stamp) and stamp <= service.orchestrator.clock() + skew and not stamp < last - skew
                    and (value is None or 0 <= value <= registry.max_load)):
                return None
            try:
                service.orchestrator.intake.put_many([CheckedHeartbeat(node_id, stamp, value, {})])
            except QueueFull:
                return None
            table.commit(session, seq, now, 1)
            return session

    def accept_usual(self, session_ids: list[str], seqs: list[int], tags: list[str], bodies: list[bytes],
                     now: float, acks: bool) -> tuple[int, dict[str, str] | None] | None:
        """A whole batch of usual session heartbeats accepted and queued at once, as one
        ``HeartbeatColumns`` batch, each step over the whole batch (``SessionTable.check_all``,
        the bodies decoded in one pass, the registry's checks with numpy): how many, and
        the acknowledgements by index when ``acks``. None, having changed nothing, unless
        every item passes (a usual batch as ``_as_columns`` takes it, each node once, more
        than a few items, no session to take up from its ticket, this server leading):
        then ``accept`` looks at the items one by one and answers, as for any batch
        (``tests/test_heartbeat_batch_fast.py`` compares the two)."""
        service = self.service
        n = len(bodies)
        if n <= _FEW or (service.ha is not None and not service.ha.leading):
            return None
        registry = service.orchestrator.registry
        if max(map(len, bodies)) > registry.max_metadata_bytes // 6:  # metadata that repeats itself: small bodies
            return None
        table = service.sessions
        decode = _body_decoder.decode
        with table.lock:
            sessions = table.check_all(session_ids, seqs, tags, bodies, now)
            if sessions is None:
                return None
            try:
                datas = [decode(body) for body in bodies]
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                return None
            ids = [s.node_id for s in sessions]
            nodes = registry.table
            slot_of = nodes.index.get
            slots = [slot_of(node_id) for node_id in ids]
            if None in slots or [d.observations for d in datas].count(None) != n \
                    or [d.metrics for d in datas].count(None) != n or [d.licence_ref for d in datas].count(None) != n:
                return None
            named = [d.node_id for d in datas]
            if named.count(None) != n and any(map(_other, named, ids)):
                return None
            fingerprint = service.keys.fingerprint
            held_fp = nodes.fingerprint
            fps = [fingerprint(node_id) for node_id in ids]
            if fps != [held_fp[slot] for slot in slots] and any(map(_other, fps, [held_fp[slot] for slot in slots])):
                return None
            metas = [d.metadata for d in datas]
            if metas.count(None) != n and not self._repeats(metas, sessions, slots, nodes.metadata):
                return None
            stamps = np.array([now if d.timestamp is None else d.timestamp for d in datas], dtype=np.float64)
            load = np.array([_NAN if d.load is None else d.load for d in datas], dtype=np.float64)
            skew = registry.max_clock_skew
            try:
                last = nodes.last_seen[np.array(slots, dtype=np.int64)]
            except IndexError:  # the table changed meanwhile (the tick thread): the careful way
                return None
            with np.errstate(invalid="ignore"):
                fine = np.isfinite(stamps) & (stamps <= service.orchestrator.clock() + skew) \
                    & ~(stamps < last - skew) & (np.isnan(load) | ((load >= 0) & (load <= registry.max_load)))
            if not fine.all():
                return None
            try:
                service.orchestrator.intake.put_columns(HeartbeatColumns(ids, stamps, load))
            except (BatchError, QueueFull):  # the careful way answers (503 per item for a full queue)
                return None
            table.commit_all(sessions, seqs, now)
            if not acks:
                return n, None
            return n, dict(zip(map(str, range(n)), ack_macs([s.key for s in sessions], seqs, now)))

    @staticmethod
    def _repeats(metas: list[dict[str, Any] | None], sessions: list[Session], slots: list[int],
                 held: list[Any]) -> bool:
        """Whether every metadata given repeats its session's last accepted metadata and
        is held by its node already, no reserved key among them (``accept``'s rule)."""
        looked: dict[tuple[int, bytes], tuple[Any, bool]] = {}  # one look per stored mapping and value
        for metadata, session, slot in zip(metas, sessions, slots):
            if not metadata:
                continue
            meta = _encode(metadata)
            if meta != session.meta:
                return False
            stored = held[slot]
            key = (id(stored), meta)
            seen = looked.get(key)
            if seen is None:
                seen = looked[key] = (stored, RESERVED_METADATA.isdisjoint(metadata)
                                      and _holds(stored, metadata, meta))  # ``stored`` kept: its id stays its own
            if not seen[1]:
                return False
        return True

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
                witnessed = () if data.observations is None else observations(node_id, data.observations)
                hb = CheckedHeartbeat(node_id, now if data.timestamp is None else data.timestamp, data.load,
                                      {} if metadata is None else metadata, fp, data.licence_ref,
                                      witnessed, data.metrics)
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
