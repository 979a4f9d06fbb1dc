"""The service around an orchestrator: enrolment, signed intake, tick thread, outbox.

``Service`` owns what ``wyneos serve`` adds to an ``Orchestrator``: the enrolled keys,
the replay window, the agent outbox, the metrics, a second connection to the state
file (for its own tables and for reading only *committed* state), and the thread that
runs ``wyneos_core.loop.run``. The HTTP layer (``app``) only translates requests into
calls on it.

Thread model: the tick runs in its own thread; HTTP handlers run on the event loop
and in a small verification pool. Heartbeats cross over through the orchestrator's
thread-safe ``HeartbeatQueue``; anything that mutates the registry or the mesh from a
request (enrolment) holds ``Service.lock``, which each tick holds too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from wyneos_core.intake import QueueFull
from wyneos_core.licensing.keys import fingerprint
from wyneos_core.loop import run
from wyneos_core.model import ORIGIN, Heartbeat, TickReport
from wyneos_core.registry import HeartbeatError, RegistryError
from wyneos_core.service.identity import AuthError, KeyCache, NonceWindow, SignedItem, b64d, verify_item
from wyneos_core.service.metrics import ServiceMetrics
from wyneos_core.service.outbox import AgentOutbox
from wyneos_core.service.settings import ServiceSettings
from wyneos_core.store import StateStore
from wyneos_core.tick import Orchestrator

__all__ = ["HEARTBEAT_PATH", "ItemResult", "Service", "Verified", "hash_token", "new_token"]

log = logging.getLogger("wyneos.service")

HEARTBEAT_PATH = "/v1/heartbeats"
ENROL_PATH = "/v1/enrol"
_PARALLEL_FROM = 64  # batches at least this big are verified on several threads


def new_token() -> str:
    """A fresh enrolment token (shown once; only its hash is stored)."""
    return "wyn_" + secrets.token_urlsafe(24)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True)
class ItemResult:
    """The outcome of one signed heartbeat: ``status`` 202 when queued."""

    status: int
    code: str = "accepted"
    error: str = ""
    node_id: str | None = None
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "code": self.code}
        if self.node_id is not None:
            out["node_id"] = self.node_id
        if self.error:
            out["error"] = self.error
        if self.field:
            out["field"] = self.field
        return out


@dataclass(slots=True)
class Verified:
    """A signed heartbeat whose signature checked out: its signed timestamp, and its
    parsed body or the refusal of its body (reported after the replay checks)."""

    ts: float
    heartbeat: Heartbeat | None
    problem: ItemResult | None = None


class _Ticking:
    """What ``loop.run`` drives: the orchestrator, each tick under the service lock."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def start(self) -> None:
        self._service.orchestrator.start()

    def stop(self) -> None:
        self._service.orchestrator.stop()

    @property
    def missed_ticks(self) -> int:
        return self._service.orchestrator.missed_ticks

    @missed_ticks.setter
    def missed_ticks(self, value: int) -> None:
        self._service.orchestrator.missed_ticks = value

    def tick(self) -> TickReport:
        return self._service.tick()


class Service:
    """``wyneos serve`` minus HTTP: build it, ``start()`` the tick thread, ``stop()``.

    :param orchestrator: an orchestrator with a file-backed state store.
    :param settings: the service settings.
    :param interval: seconds between ticks (default: ``tick.interval``).
    """

    def __init__(self, orchestrator: Orchestrator, settings: ServiceSettings, *, interval: float | None = None) -> None:
        if orchestrator.store is None or orchestrator.store.path == ":memory:":
            raise ValueError("service mode needs a state file (state.path must not be ':memory:')")
        self.orchestrator = orchestrator
        self.settings = settings
        self.interval = float(interval if interval is not None else orchestrator.config["tick"]["interval"])
        self.lock = threading.RLock()
        self.started_at = time.time()
        self.keys = KeyCache()
        self.nonces = NonceWindow(settings.replay_window, not_before=self.started_at)
        self.metrics = ServiceMetrics()
        self.db = StateStore.open(orchestrator.store.path)  # own connection: committed state only
        self.db_lock = threading.Lock()
        with self.db_lock:
            self.db.ensure_service_tables()
        self._key_seq = 0
        self.outbox = AgentOutbox(self._is_agent)
        orchestrator.pm.register(self.outbox, AgentOutbox.__wyneos_name__)
        threads = settings.verify_threads or (os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wyneos-verify")
        self.verify_threads = threads
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tick_error: str | None = None
        self._restore()

    # -- startup -------------------------------------------------------------------------

    def _restore(self) -> None:
        """Carry on where the last run stopped: keys, enrolled nodes, isolations, outbox."""
        orch = self.orchestrator
        self.refresh_keys()
        now = orch.clock()
        with self.lock:
            for row in self.db.node_keys():
                if row["node_id"] not in orch.registry and row["revoked_at"] is None:
                    self._join(row["node_id"], row["fingerprint"], now)
            for node in orch.registry:
                if node.id in self.keys and node.fingerprint is None:
                    node.fingerprint = self.keys.fingerprint(node.id)
                if node.isolated and node.id in orch.mesh and not orch.mesh.is_isolated(node.id):
                    orch.mesh.isolate(node.id)
        with self.db_lock:
            acked = {(a["action_id"], a["node_id"]) for a in self.db.action_acks()}
            rows = self.db.actions("in_force")
        restored = self.outbox.restore(rows, acked)
        if restored:
            log.info("outbox: %d unacknowledged action(s) queued again for agents", restored)

    def _is_agent(self, node_id: str) -> bool:
        return node_id in self.keys and not self.keys.is_revoked(node_id)

    def _join(self, node_id: str, fp: str, now: float) -> None:
        """Add an enrolled node to the registry and the mesh (caller holds the lock)."""
        orch = self.orchestrator
        node = orch.registry.get(node_id)
        if node is None:
            node = orch.registry.register(node_id, now=now, fingerprint=fp)
        node.fingerprint = fp
        if node_id not in orch.mesh:
            orch.mesh.add_node(node_id)
            orch.mesh.add_edges([(ORIGIN, node_id)])

    def refresh_keys(self) -> int:
        """Pick up key changes from the state file (enrolments, ``wyneos enrol revoke``)."""
        with self.db_lock:
            rows = self.db.node_keys(self._key_seq)
        for row in rows:
            self.keys.set(row["node_id"], row["public_key"], revoked=row["revoked_at"] is not None)
            self._key_seq = max(self._key_seq, row["seq"])
        if rows:
            self.metrics.enrolled.set(self.keys.active_count())
        return len(rows)

    # -- tick thread ---------------------------------------------------------------------

    def tick(self) -> TickReport:
        """One tick under the service lock, then metrics."""
        self.refresh_keys()
        self.metrics.queue.set(len(self.orchestrator.intake))
        with self.lock:
            report = self.orchestrator.tick()
        from wyneos_core.builtin.decide import in_force_actions

        self.metrics.observe_tick(report, self.orchestrator.missed_ticks, in_force_actions(self.orchestrator))
        self.metrics.outbox.set(self.outbox.depth())
        return report

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="wyneos-tick", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            run(_Ticking(self), interval=self.interval, stop=self._stop)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - reported by /healthz
            self.tick_error = f"{type(exc).__name__}: {exc}"
            log.exception("tick loop stopped")

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self.db_lock:
            self.db.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- enrolment -----------------------------------------------------------------------

    def enrol(self, item: SignedItem) -> tuple[int, dict[str, Any]]:
        """Enrol the key in an enrolment request (signed by that very key).

        Body: ``{"node_id", "public_key" (base64url raw 32 bytes), "token"}``; the token
        may be left out when the config pins the node's fingerprint.
        """
        body = _json_object(item.body)
        node_id, pub_text, token = body.get("node_id"), body.get("public_key"), body.get("token")
        if node_id != item.node_id:
            raise AuthError(403, f"the body enrols {node_id!r} but the request is signed as {item.node_id!r}",
                            "node_mismatch")
        try:
            raw = b64d(pub_text) if isinstance(pub_text, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise _Unprocessable("public_key", "not a base64url raw Ed25519 public key (32 bytes)")
        if token is not None and (not isinstance(token, str) or len(token) > 200):
            raise _Unprocessable("token", "not a string of at most 200 characters")
        fp = fingerprint(raw)
        existing = self.keys.get(node_id)
        if existing is not None:
            same = existing == raw
            if self.keys.is_revoked(node_id):
                raise AuthError(403, f"the key of node {node_id!r} is revoked", "revoked")
            if not same:
                raise AuthError(409, f"node {node_id!r} is enrolled with another key ({self.keys.fingerprint(node_id)})",
                                "key_conflict")
        # proof of possession: the request is signed by the key being enrolled
        probe = KeyCache()
        probe.set(node_id, raw)
        now = time.time()
        ts = verify_item(item, "POST", ENROL_PATH, probe, now)
        self.nonces.check_time(ts, now)
        self.nonces.claim(node_id, item.nonce, ts, now)
        if existing is not None:
            return 200, self._enrolled(node_id, fp, created=False)
        pinned = self._pinned_fingerprint(node_id)
        if pinned is not None and pinned != fp:
            raise AuthError(403, f"the config pins node {node_id!r} to {pinned}, not {fp}", "fingerprint_mismatch")
        if pinned is None:
            if not token:
                raise AuthError(401, "enrolment needs a token (`wyneos enrol token`) or a fingerprint pinned "
                                     "in the config", "token_required")
            with self.db_lock:
                why = self.db.use_enrol_token(hash_token(token), node_id, now)
            if why is not None:
                raise AuthError(403, why, "bad_token")
        if node_id not in self.orchestrator.registry and not self.settings.register_on_enrol:
            raise AuthError(403, f"node {node_id!r} is not in the config (service.register_on_enrol is false)",
                            "not_registered")
        with self.db_lock:
            self.db.put_node_key(node_id, raw, fp, now)
        self.keys.set(node_id, raw)
        with self.lock:
            try:
                self._join(node_id, fp, self.orchestrator.clock())
            except RegistryError as exc:
                raise _Unprocessable("node_id", str(exc)) from None
        self.refresh_keys()
        log.info("enrolled node %s with key %s", node_id, fp)
        return 201, self._enrolled(node_id, fp, created=True)

    def _pinned_fingerprint(self, node_id: str) -> str | None:
        for spec in self.orchestrator.config["nodes"]:
            if spec["id"] == node_id:
                return spec.get("fingerprint")
        return None

    def _enrolled(self, node_id: str, fp: str, created: bool) -> dict[str, Any]:
        hb = self.orchestrator.config["heartbeat"]
        return {"node_id": node_id, "fingerprint": fp, "enrolled": created, "server_time": time.time(),
                "heartbeat_interval": hb["interval"], "replay_window": self.settings.replay_window}

    # -- heartbeats ----------------------------------------------------------------------

    def verify_all(self, items: Sequence[SignedItem], now: float) -> list[ItemResult | Verified]:
        """Verify signatures and parse bodies, on several threads for big batches.

        One result per item: a refusal, or a ``Verified`` for ``accept``. The threads
        overlap: while one waits in libsodium (GIL released) another parses.
        """
        if len(items) < _PARALLEL_FROM or self.verify_threads < 2:
            return _verify_chunk(items, self.keys)
        size = math.ceil(len(items) / self.verify_threads)
        futures = [self.pool.submit(_verify_chunk, items[i:i + size], self.keys) for i in range(size, len(items), size)]
        out = _verify_chunk(items[:size], self.keys)  # the calling thread takes the first share
        for f in futures:
            out.extend(f.result())
        return out

    def accept(self, items: Sequence[SignedItem], verified: Sequence[ItemResult | Verified],
               now: float) -> list[ItemResult]:
        """Replay checks, then body and registry checks, then queueing (one result each).

        A body problem found while verifying is reported only for an item that passed
        the replay checks, so a replay is a 409 whatever its body; registry checks run
        only for fresh items (a replay never touches a node).
        """
        results: list[ItemResult | None] = [None] * len(items)
        claims: list[tuple[int, Verified]] = []
        window = self.nonces
        low, high = now - window.window, now + window.window
        for i, v in enumerate(verified):
            if type(v) is ItemResult:
                results[i] = v
                continue
            ts = v.ts  # type: ignore[union-attr]
            if not (low <= ts <= high and ts >= window.not_before):
                try:
                    window.check_time(ts, now)
                except AuthError as exc:
                    results[i] = ItemResult(exc.status, exc.code, exc.reason, items[i].node_id)
                    continue
            claims.append((i, v))  # type: ignore[arg-type]
        outcomes = window.claim_many(((items[i].node_id, items[i].nonce, v.ts) for i, v in claims), now)
        heartbeats: list[tuple[int, Heartbeat]] = []
        check = self.orchestrator.registry.check
        orch_now = self.orchestrator.clock()
        for (i, v), refused in zip(claims, outcomes):
            node_id = items[i].node_id
            if refused is not None:
                results[i] = ItemResult(refused.status, refused.code, refused.reason, node_id)
            elif v.problem is not None:
                results[i] = v.problem
            else:
                try:
                    check(v.heartbeat, orch_now)
                except HeartbeatError as exc:
                    results[i] = ItemResult(422, "invalid", exc.reason, node_id, exc.field)
                    continue
                heartbeats.append((i, v.heartbeat))  # type: ignore[arg-type]
        if heartbeats:
            try:
                self.orchestrator.intake.put_many(hb for _, hb in heartbeats)
            except QueueFull as exc:
                for i, hb in heartbeats:
                    window.release(hb.node_id, items[i].nonce)
                    results[i] = ItemResult(503, "queue_full", str(exc), hb.node_id)
            else:
                for i, hb in heartbeats:
                    results[i] = ItemResult(202, "accepted", "", hb.node_id)
        final = [r if r is not None else ItemResult(500, "internal", "not processed") for r in results]
        tally: dict[str, int] = {}
        for r in final:
            tally[r.code] = tally.get(r.code, 0) + 1
        for code, count in tally.items():
            self.metrics.heartbeats.labels(code).inc(count)
        return final

    # -- actions for agents ---------------------------------------------------------------

    def acknowledge(self, node_id: str, body: bytes) -> dict[str, Any]:
        data = _json_object(body)
        acks = data.get("acks")
        if not isinstance(acks, list) or len(acks) > 1000:
            raise _Unprocessable("acks", "expected a list of at most 1000 acknowledgements")
        done = []
        now = time.time()
        for index, ack in enumerate(acks):
            if not isinstance(ack, dict) or not isinstance(ack.get("action_id"), str):
                raise _Unprocessable(f"acks[{index}].action_id", "expected a string")
            status = ack.get("status", "applied")
            if status not in ("applied", "failed", "ignored"):
                raise _Unprocessable(f"acks[{index}].status", "expected applied, failed or ignored")
            detail = ack.get("detail", "")
            if not isinstance(detail, str):
                raise _Unprocessable(f"acks[{index}].detail", "expected a string")
        for ack in acks:
            status = ack.get("status", "applied")
            with self.db_lock:
                self.db.record_action_ack(ack["action_id"], node_id, status, ack.get("detail", ""), now)
            self.outbox.ack(node_id, ack["action_id"])
            self.metrics.acks.labels(status).inc()
            log.info("node %s acknowledged action %s: %s", node_id, ack["action_id"], status)
            done.append(ack["action_id"])
        self.metrics.outbox.set(self.outbox.depth())
        return {"acknowledged": done}

    # -- committed state (reads) ---------------------------------------------------------

    def committed_actions(self) -> dict[str, Any]:
        with self.db_lock:
            in_force = self.db.actions("in_force")
            recent = self.db.action_events(max(0, self.db.last_tick() - 50))
            acks = self.db.action_acks()
            last_tick = self.db.last_tick()
        return {"committed_tick": last_tick, "in_force": in_force, "events": recent[-500:], "acks": acks[-500:]}

    def committed_ticks(self, limit: int) -> list[dict[str, Any]]:
        with self.db_lock:
            return self.db.tick_summaries(limit)


class _Unprocessable(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


Unprocessable = _Unprocessable


_decode_json = json.JSONDecoder().decode


def _json_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object (UTF-8, as RFC 8259 asks; decoding it directly
    skips ``json.loads``'s encoding detection, a third of the cost of a small body)."""
    try:
        data = _decode_json(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Unprocessable("body", f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _Unprocessable("body", "expected a JSON object")
    return data


_FIELDS = frozenset(("node_id", "timestamp", "load", "metadata", "licence_ref"))


def _heartbeat(item: SignedItem, ts: float, fp: str | None) -> Heartbeat:
    """The heartbeat in a verified item's body; ``AuthError`` / ``_Unprocessable`` when bad."""
    body = _json_object(item.body)
    node_id = body.get("node_id", item.node_id)
    if node_id != item.node_id:
        raise AuthError(403, f"heartbeat for {node_id!r} signed by {item.node_id!r}", "node_mismatch")
    if not _FIELDS.issuperset(body):
        unknown = sorted(set(body) - _FIELDS)
        raise _Unprocessable(unknown[0], "unknown field (known: node_id, timestamp, load, metadata, licence_ref)")
    metadata = body.get("metadata")
    return Heartbeat(node_id, body.get("timestamp", ts), body.get("load"), {} if metadata is None else metadata, fp,
                     body.get("licence_ref"))


def _verify_chunk(items: Sequence[SignedItem], keys: KeyCache) -> list[ItemResult | Verified]:
    """Signature, then body, of each item (runs on a verifier thread; touches no state)."""
    out: list[ItemResult | Verified] = []
    for item in items:
        try:
            ts = verify_item(item, "POST", HEARTBEAT_PATH, keys, 0.0)
        except AuthError as exc:
            out.append(ItemResult(exc.status, exc.code, exc.reason, str(item.node_id)[:128]))
            continue
        try:
            out.append(Verified(ts, _heartbeat(item, ts, keys.fingerprint(item.node_id))))
        except AuthError as exc:
            out.append(Verified(ts, None, ItemResult(exc.status, exc.code, exc.reason, item.node_id)))
        except _Unprocessable as exc:
            out.append(Verified(ts, None, ItemResult(422, "invalid", exc.reason, item.node_id, exc.field)))
    return out
