"""The service around an orchestrator: enrolment, signed intake, tick thread, outbox.

``Service`` owns what ``wyneos serve`` adds to an ``Orchestrator``: the enrolled keys,
the replay window, the agent outbox, the metrics, a second connection to the state
file (for its own tables and for reading only *committed* state), and the thread that
runs ``wyneos_core.loop.run``. The HTTP layer (``app``) only translates requests into
calls on it.

Thread model: the tick runs in its own thread; HTTP handlers run on the event loop
and in worker threads. Heartbeats cross over through the orchestrator's thread-safe
``HeartbeatQueue``; anything that mutates the registry or the mesh from a request
(enrolment) holds ``Service.lock``, which each tick holds too, and runs in a worker
thread, never on the event loop. Readers never take that lock: after each tick (and
each enrolment) the service publishes a ``ClusterView``, an immutable snapshot of the
nodes, the last report and the actions in force, by swapping one reference; a reader
takes the current one and works on it while the next tick runs.
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from wyneos_core.builtin.trust import record_acks, record_refusals
from wyneos_core.intake import CheckedHeartbeat, QueueFull
from wyneos_core.licensing.keys import fingerprint
from wyneos_core.loop import run
from wyneos_core.config import ConfigError
from wyneos_core.mesh import MeshError
from wyneos_core.model import ORIGIN, Heartbeat, Node, Observation, TickReport
from wyneos_core.registry import NODE_ID_PATTERN, RESERVED_NODE_IDS, HeartbeatError, RegistryError
from wyneos_core.safeio import bad_text, field_path
from wyneos_core.service.limits import RateLimiter
from wyneos_core.service.identity import AuthError, KeyCache, NonceWindow, SignedItem, b64d, verify_item
from wyneos_core.service.metrics import ServiceMetrics
from wyneos_core.service.orchestrator_key import OrchestratorKey, keyring_statement
from wyneos_core.service.outbox import AgentOutbox
from wyneos_core.service.peer import MAX_OBSERVATION_AGE
from wyneos_core.service import signed_actions as sa
from wyneos_core.service.sessions import SessionTable
from wyneos_core.service.view import ClusterView, NodeMap
from wyneos_core.service.settings import ServiceSettings
from wyneos_core.tick import Orchestrator

__all__ = ["HEARTBEAT_PATH", "ClusterView", "ItemResult", "Service", "Verified", "hash_token", "new_token"]

log = logging.getLogger("wyneos.service")

HEARTBEAT_PATH = "/v1/heartbeats"
ENROL_PATH = "/v1/enrol"
_PARALLEL_FROM = 64  # batches at least this big are verified on several threads
_MESH_LIMIT = 2000  # nodes the mesh view draws at most
_MESH_DEMAND = 30.0  # seconds after a mesh request during which each tick prepares the mesh view
_MESH_ALWAYS = 5000  # up to this many mesh vertices each tick prepares the mesh view anyway
_ACK_PRUNE_EVERY = 10  # ticks between prunes of old acknowledgements
MAX_ACTION_ID = 128
MAX_ACK_DETAIL = 1000
#: seconds a signed action envelope stays valid (signed again at half-life while pending)
ACTION_TTL = 3600.0
MAX_REFUSALS = 100  # refusal reports per request
_KEEP_REFUSALS = 10_000  # refusal reports kept in the state file
_REFUSAL_CODES = frozenset(("malformed", "unsigned", "unknown_key", "bad_signature", "expired", "not_yet_valid",
                            "replayed", "other_node", "unknown_type", "bad_answer"))


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
        store = orchestrator.store
        if store is None or store.path == ":memory:":
            raise ConfigError("service mode keeps its state in a file; ':memory:' keeps nothing across a restart "
                              "(give a file name)", file=orchestrator.config.source, field="state.path")
        self.orchestrator = orchestrator
        self.settings = settings
        self.interval = float(interval if interval is not None else orchestrator.config["tick"]["interval"])
        self.lock = threading.RLock()
        self.started_at = time.time()
        self.keys = KeyCache()
        self.nonces = NonceWindow(settings.replay_window, not_before=self.started_at)
        #: heartbeats per node (after the signature checks out: only enrolled nodes have a bucket)
        self.heartbeat_limit = RateLimiter(settings.heartbeat_rate, settings.heartbeat_burst)
        #: enrolment attempts per client address (before anything is read)
        self.enrol_limit = RateLimiter(settings.enrol_rate, settings.enrol_burst, max_keys=65_536)
        self.metrics = ServiceMetrics()
        #: signs every action handed to agents (made beside the state file on first start;
        #: ``KeyFileError`` naming the file when it is unusable; replicas on etcd: beside
        #: ``state.path``, the same key copied to every replica)
        self.okey = OrchestratorKey.for_state(store.path if getattr(store, "backend", "sqlite") == "sqlite"
                                              else orchestrator.config.resolve(orchestrator.config["state"]["path"]))
        if getattr(store, "backend", "sqlite") == "etcd":  # keys, tokens, customers: signed with the key
            from wyneos_core.ha.values import Sealer

            store.sealer = Sealer.of(self.okey)
        self.db = store.reopen()  # own connection: committed state only
        self.db_lock = threading.Lock()
        with self.db_lock:
            self.db.ensure_service_tables()
            self.db.ensure_signing_tables()
        self._key_seq = 0
        self._keys_read_at = 0.0
        self.handover = sa.load_handover(self.okey.path, self.okey.key_id)
        # the keys held and retired, signed by the current key (agents drop the others)
        self.keyring_statement = keyring_statement(self.okey)
        # session tickets sealed under a key derived from the orchestrator key: every replica
        # holds it, and so does this server after a restart (no new handshake after either)
        self.sessions = SessionTable(self.keys, self.okey.seal, ttl=settings.session_ttl,
                                     rate=settings.heartbeat_rate, burst=settings.heartbeat_burst,
                                     max_sessions=settings.max_sessions,
                                     secret=self.okey.sign(b"wyneos-session-tickets-v1"))
        self.outbox = AgentOutbox(self._is_agent, sign=self._sign_action, ttl=ACTION_TTL)
        orchestrator.pm.register(self.outbox, AgentOutbox.__wyneos_name__)
        # compliance mesh: each agent's signed neighbour list rides on the answer to its heartbeat
        from wyneos_core.service.peer import NeighbourBook

        self.neighbours = NeighbourBook(lambda fmt, payload: self.okey.seal(fmt, payload), settings.max_sessions)
        orchestrator.pm.register(self.neighbours, NeighbourBook.__wyneos_name__)
        # relay: waiting signed actions of nodes heard only through their witnesses go by a peer
        from wyneos_core.service.action_relay import SCHEMA as RELAY_SCHEMA, RelayDesk

        with self.db_lock:
            if getattr(self.db, "conn", None) is not None:  # SQLite; other stores keep relay outcomes in memory
                self.db.conn.executescript(RELAY_SCHEMA)
        self.relay_desk = RelayDesk(self, _relay_ack_ticks(orchestrator))
        orchestrator.pm.register(self.relay_desk, RelayDesk.__wyneos_name__)
        self.outbox.hop_notes.append(self.relay_desk.note_hops)  # both see a level's hops at once
        threads = settings.verify_threads or (os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wyneos-verify")
        self.verify_threads = threads
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tick_error: str | None = None
        self._mesh_wanted = 0.0
        self.view = ClusterView(orchestrator.tick_number, {}, None)
        #: the leadership side when the state is in etcd (replicas); None: the only server
        self.ha: Any = None
        if getattr(store, "backend", "sqlite") == "etcd":
            from wyneos_core.ha.replica import Replica, election_config

            etcd = orchestrator.config["state"]["etcd"]
            self.ha = Replica(self, self.db, election_config(orchestrator.config), etcd.get("replica_id"),
                              etcd.get("advertise_url"))
        self._restore()
        with self.lock:
            self._publish(None)

    # -- startup -------------------------------------------------------------------------

    def _restore(self) -> None:
        """Carry on where the last run stopped: keys, enrolled nodes, isolations, outbox."""
        orch = self.orchestrator
        self.refresh_keys()
        with self.lock:
            for row in self.db.node_keys():
                if row["node_id"] not in orch.registry and row["revoked_at"] is None:
                    try:
                        self._join(row["node_id"], row["fingerprint"])
                    except (RegistryError, MeshError) as exc:
                        log.warning("enrolled node %s cannot join: %s", row["node_id"], exc)
            with self.db_lock:
                customers = self.db.node_customers()
            for node in orch.registry:
                if node.id in self.keys and node.fingerprint is None:
                    node.fingerprint = self.keys.fingerprint(node.id)
                customer = customers.get(node.id)
                if customer is not None and "customer" not in self._configured_metadata(node.id):
                    node.metadata = {**node.metadata, "customer": customer}
                if node.isolated and node.id in orch.mesh and not orch.mesh.is_isolated(node.id):
                    orch.mesh.isolate(node.id)
        with self.db_lock:
            acked = {(a["action_id"], a["node_id"]) for a in self.db.action_acks()}
            rows = self.db.actions("in_force")
            issued = {t: int(at * 1000) for t, at in self.db.tick_times(r["first_tick"] for r in rows).items()}
        restored = self.outbox.restore(rows, acked, issued)
        if restored:
            log.info("outbox: %d unacknowledged action(s) queued again for agents", restored)

    def _sign_action(self, action: dict[str, Any], issued_at: int, expires_at: int) -> dict[str, Any]:
        return sa.seal_action(self.okey.private, action, issued_at, expires_at)

    def key_info(self) -> dict[str, Any]:
        """The orchestrator key as agents pin it: the current key, the previous one kept
        during a rotation, and the old key's signed hand-over to the current one."""
        info: dict[str, Any] = sa.key_entry(self.okey.private)
        info["previous"] = [sa.key_entry(k) for kid, k in self.okey.keyring().items() if kid != self.okey.key_id]
        if self.handover is not None:
            info["handover"] = self.handover
        info["keyring"] = self.keyring_statement
        return info

    def key_ref(self) -> dict[str, Any]:
        """What each answer to an agent says about the signing key: its id, and the
        hand-over to it after a rotation (so an agent that pinned the old key moves on)."""
        ref: dict[str, Any] = {"key_id": self.okey.key_id, "keyring": self.keyring_statement}
        if self.handover is not None:
            ref["handover"] = self.handover
        return ref

    def _is_agent(self, node_id: str) -> bool:
        return node_id in self.keys and not self.keys.is_revoked(node_id)

    def _join(self, node_id: str, fp: str, licence_ref: str | None = None,
              customer: str | None = None) -> Callable[[], None]:
        """Put an enrolled node in the registry and the mesh (caller holds the lock).

        All or nothing: if any step fails, what the earlier ones did is undone before the
        error goes on. Returns a function that undoes the whole join (the node leaves
        again if it was not registered before; a registered node gets its earlier
        fingerprint back).
        """
        orch = self.orchestrator
        node = orch.registry.get(node_id)
        added = node is None
        in_mesh = node_id in orch.mesh
        before = None if node is None else node.fingerprint
        metadata = None if node is None else node.metadata

        def undo() -> None:
            if not in_mesh and node_id in orch.mesh:
                orch.mesh.remove_node(node_id)
            if added:
                if node_id in orch.registry:
                    orch.registry.deregister(node_id)
            else:
                current = orch.registry.get(node_id)
                if current is not None:
                    current.fingerprint = before
                    current.metadata = metadata  # type: ignore[assignment]

        try:
            if node is None:
                node = orch.add_node(node_id, fingerprint=fp, licence_ref=licence_ref)
            node.fingerprint = fp
            if customer is not None and "customer" not in self._configured_metadata(node_id):
                node.metadata = {**node.metadata, "customer": customer}  # the config's word wins
            if node_id not in orch.mesh:
                orch.mesh.add_node(node_id)
                orch.mesh.add_edges([(ORIGIN, node_id)])
        except BaseException:
            undo()
            raise
        return undo

    def refresh_keys(self) -> int:
        """Pick up key changes from the state file (enrolments, ``wyneos enrol revoke``)."""
        with self.db_lock:
            rows = self.db.node_keys(self._key_seq)
        for row in rows:
            revoked = row["revoked_at"] is not None
            try:
                self.keys.set(row["node_id"], row["public_key"], revoked=revoked)
            except (ValueError, TypeError):  # a damaged row: that node cannot authenticate; the rest go on
                log.error("state file: damaged row in table node_keys (%r): public_key: not a 32-byte Ed25519 key "
                          "(check the file with `wyneos state check`; enrol the node again)", row["node_id"])
                self._key_seq = max(self._key_seq, row["seq"])
                continue
            self._key_seq = max(self._key_seq, row["seq"])
            if revoked and hasattr(self, "sessions"):
                self.sessions.end_node(row["node_id"])  # a revoked key ends its sessions at once
        if rows and self.ha is not None:  # enrolled at another replica: join here too
            with self.lock:
                for row in rows:
                    if row["revoked_at"] is None and row["node_id"] not in self.orchestrator.registry:
                        try:
                            self._join(row["node_id"], row["fingerprint"])
                        except RegistryError as exc:
                            log.warning("enrolled node %s cannot join: %s", row["node_id"], exc)
        if rows:
            self.metrics.enrolled.set(self.keys.active_count())
        return len(rows)

    def _catch_up_keys(self) -> None:
        """Replicas: read keys enrolled elsewhere now (at most twice a second; blocks on
        etcd: worker threads only). A node that moved here from another replica before
        this one saw its key gets 401 ``not_enrolled`` for a heartbeat, enrols again, and
        is recognised here as already enrolled (no token spent)."""
        now = time.monotonic()
        if now - self._keys_read_at < 0.5:
            return
        self._keys_read_at = now
        try:
            self.refresh_keys()
        except Exception as exc:  # noqa: BLE001 - etcd unreachable: the keys known so far decide
            log.info("cannot read enrolled keys: %s", exc)

    # -- tick thread ---------------------------------------------------------------------

    def tick(self) -> TickReport | None:
        """One tick slot: with replicas, the replica leads (ticks) or follows."""
        if self.ha is not None:
            return self.ha.tick()
        return self.tick_now()

    def publish_committed(self, report: TickReport, in_force: list[dict[str, Any]]) -> None:
        """Publish the committed state a follower read (caller holds the lock)."""
        self._publish(report, in_force)

    def publish_view(self) -> None:
        """Publish a fresh ``view`` of the registry (caller holds the lock)."""
        self._publish(None)

    def tick_now(self) -> TickReport:
        """One tick under the service lock, a new ``view`` published, then metrics."""
        from wyneos_core.builtin.decide import in_force_actions

        self.refresh_keys()
        self.metrics.queue.set(len(self.orchestrator.intake))
        with self.lock:
            report = self.orchestrator.tick()
            in_force = in_force_actions(self.orchestrator)
            self._publish(report, in_force)
        self.metrics.observe_tick(report, self.orchestrator.missed_ticks, in_force)
        self.metrics.outbox.set(self.outbox.depth())
        self._log_licence_stop(report)
        if report.tick % _ACK_PRUNE_EVERY == 0:
            with self.db_lock:
                self.db.prune_action_acks(report.tick, self.orchestrator.config["state"]["retention_ticks"])
                self.db.prune_signed_acks()
        return report

    def _log_licence_stop(self, report: TickReport) -> None:
        """Log the licence safety stop when it starts and when it ends (not every tick)."""
        from wyneos_core.service.metrics import licence_stop

        stop = licence_stop(report)
        code = None if stop is None else stop[0]
        if code == getattr(self, "_licence_stopped", None):
            return
        if stop is not None:
            log.error("%s", stop[1])
        else:
            log.warning("licence safety stop lifted: licence actions resume")
        self._licence_stopped = code

    def _publish(self, report: TickReport | None, in_force: list[dict[str, Any]] | None = None) -> None:
        """Publish a fresh ``view`` (caller holds the lock)."""
        orch = self.orchestrator
        nodes: Any
        if report is not None:
            nodes = report.nodes  # the tick's frozen copy of the columns: nothing made per node
            if len(nodes) != len(orch.registry):  # joined after the tick's snapshot, or removed
                held = NodeMap(nodes)
                nodes = [held.get(n.id) or n.snapshot() for n in orch.registry]
        else:
            nodes = orch.registry.table.freeze()  # the columns now, copied (no Node per node)
            report = self.view.report
        if in_force is None:
            targets = self.view.in_force
        else:
            grouped: dict[str, set[str]] = {}
            for a in in_force:
                grouped.setdefault(a["target"], set()).add(a["id"])
            targets = {t: frozenset(ids) for t, ids in grouped.items()}
        wanted = len(orch.mesh) <= _MESH_ALWAYS or time.monotonic() - self._mesh_wanted < _MESH_DEMAND
        self.view = ClusterView(orch.tick_number, NodeMap(nodes), report, targets,
                                self._mesh_data() if wanted else None)

    def _mesh_data(self) -> dict[str, Any]:
        """The mesh for the dashboard (caller holds the lock)."""
        orch = self.orchestrator
        mesh = orch.mesh
        names = sorted(n for n in mesh.vertices() if n != ORIGIN)[:_MESH_LIMIT]
        edges = [[a, b] for a, b in mesh.edges(within={*names, ORIGIN})][:20000]
        states = {}
        for n in names:
            node = orch.registry.get(n)
            if node is not None:
                states[n] = {"status": node.status.value, "isolated": node.isolated, "load": node.load,
                             "trust_tier": node.trust_tier}
        return {"nodes": names, "edges": edges, "states": states, "truncated": len(mesh) - 1 > _MESH_LIMIT,
                "isolated": sorted(orch.mesh.isolated)}

    def mesh_view(self) -> dict[str, Any]:
        """The mesh as the dashboard draws it: from the current view when the last tick
        prepared it (always, up to 5,000 vertices; for bigger meshes while requests
        keep coming); else built under the lock, waiting for a running tick: call it
        from a worker thread."""
        self._mesh_wanted = time.monotonic()
        view = self.view
        if view.mesh is not None:
            return view.mesh
        with self.lock:
            data = self._mesh_data()
        return data

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.ha is not None:
            self.ha.start()
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
        if self.ha is not None:
            self.ha.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.ha is not None:
            self.ha.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self.db_lock:
            self.db.close()

    def leadership(self) -> dict[str, Any]:
        """``role`` (leader or follower), ``leader`` (id, url, term) and ``deciding``
        for /healthz; the only server of an embedded (SQLite) state always leads."""
        if self.ha is None:
            return {"role": "leader", "deciding": True, "leader": {"id": "embedded", "url": None, "term": None},
                    "backend": "sqlite"}
        # ``tick`` (it overrides the view's in /healthz): the last tick etcd committed, never
        # one a failed or fenced write left in memory
        return {"role": self.ha.role, "deciding": self.ha.leading, "leader": self.ha.leader_info(),
                "replica": self.ha.id, "backend": "etcd", "etcd_error": self.ha.follow_error,
                "forward_queue": self.ha.forwarder.depth(), "tick": self.ha.committed_tick,
                "watch": self.ha.watch_info()}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- enrolment -----------------------------------------------------------------------

    def enrol(self, item: SignedItem) -> tuple[int, dict[str, Any]]:
        """Enrol the key in an enrolment request (signed by that very key).

        Body: ``{"node_id", "public_key" (base64url raw 32 bytes), "token", "licence_ref"}``;
        the token may be left out when the config pins the node's fingerprint;
        ``licence_ref`` (optional) names the node's licence from the start.

        All or nothing: every check runs before anything changes; the node joins, the
        token is spent and the key is stored under the service lock, and a failure of
        any of them undoes the others. Takes the tick lock: call it from a worker thread.
        """
        body = _json_object(item.body)
        node_id, pub_text, token = body.get("node_id"), body.get("public_key"), body.get("token")
        licence_ref = body.get("licence_ref")
        if node_id != item.node_id:
            raise AuthError(403, f"the body enrols {node_id!r} but the request is signed as {item.node_id!r}",
                            "node_mismatch")
        if node_id in RESERVED_NODE_IDS:
            raise _Unprocessable("node_id", f"{node_id!r} is reserved (the orchestrator's own id)")
        try:
            raw = b64d(pub_text) if isinstance(pub_text, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise _Unprocessable("public_key", "not a base64url raw Ed25519 public key (32 bytes)")
        if token is not None and (not isinstance(token, str) or len(token) > 200):
            raise _Unprocessable("token", "not a string of at most 200 characters")
        if licence_ref is not None and (not isinstance(licence_ref, str) or not 0 < len(licence_ref) <= 256):
            raise _Unprocessable("licence_ref", "not a string of 1-256 characters")
        fp = fingerprint(raw)
        if self.ha is not None and node_id not in self.keys:
            self._catch_up_keys()  # enrolled at another replica: this is a re-enrolment, not a new one
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
        if pinned is None and not token:
            raise AuthError(401, "enrolment needs a token (`wyneos enrol token`) or a fingerprint pinned "
                                 "in the config", "token_required")
        registry = self.orchestrator.registry
        if node_id not in registry:
            if not self.settings.register_on_enrol:
                raise AuthError(403, f"node {node_id!r} is not in the config (service.register_on_enrol is false)",
                                "not_registered")
            if not NODE_ID_PATTERN.match(node_id):
                raise _Unprocessable("node_id", "not a valid node id")
            if len(registry) >= registry.max_nodes:
                raise _Unprocessable("node_id", f"registry full: heartbeat.max_nodes ({registry.max_nodes}) nodes")
        undo: list[Callable[[], None]] = []
        with self.lock:
            # the token is checked (and spent) in the same transaction that stores the key;
            # only once it is good does the node join, and a failure of any step undoes all
            try:
                with self.db_lock:
                    why = self.db.enrol_with_token(None if pinned is not None else hash_token(token), node_id, raw,
                                                   fp, now, lambda customer: undo.append(
                                                       self._join(node_id, fp, licence_ref, customer)))
            except BaseException:
                for step in undo:
                    step()
                raise
            if why is not None:
                raise AuthError(403, why, "bad_token")
            self.keys.set(node_id, raw)
            self._publish(None)
        self.refresh_keys()
        log.info("enrolled node %s with key %s", node_id, fp)
        return 201, self._enrolled(node_id, fp, created=True)

    def _configured_metadata(self, node_id: str) -> dict[str, Any]:
        for spec in self.orchestrator.config["nodes"]:
            if spec["id"] == node_id:
                return spec.get("metadata") or {}
        return {}

    def _pinned_fingerprint(self, node_id: str) -> str | None:
        for spec in self.orchestrator.config["nodes"]:
            if spec["id"] == node_id:
                return spec.get("fingerprint")
        return None

    def _enrolled(self, node_id: str, fp: str, created: bool) -> dict[str, Any]:
        hb = self.orchestrator.config["heartbeat"]
        return {"node_id": node_id, "fingerprint": fp, "enrolled": created, "server_time": time.time(),
                "heartbeat_interval": hb["interval"], "replay_window": self.settings.replay_window,
                "orchestrator_key": self.key_info()}

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
        allow = self.heartbeat_limit.allow
        seen = window._seen  # read only: a dict lookup under the GIL
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
            # the rate is checked before the nonce is remembered (a flood costs no memory),
            # but a replay (refused by the claim below) takes nothing from the node's budget
            if (items[i].node_id, items[i].nonce) not in seen and not allow(items[i].node_id, now):
                results[i] = ItemResult(429, "rate_limited", f"more than {self.settings.heartbeat_rate:g} heartbeats/s "
                                        f"(burst {self.settings.heartbeat_burst}) from this node "
                                        "(service.heartbeat_rate)", items[i].node_id)
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
        if heartbeats and self.ha is not None and not self.ha.leading:  # a follower: on to the leader
            self.ha.forward([items[i] for i, _ in heartbeats])
            for i, hb in heartbeats:
                results[i] = ItemResult(202, "accepted", "", hb.node_id)
        elif heartbeats:
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
        # refused replays and clock problems count against the node's trust, only when the
        # node's own signature checked out: anyone can send junk naming a node (a bad
        # signature, an unknown key) and it says nothing about that node
        refused = [r.node_id for r, v in zip(final, verified) if type(v) is not ItemResult
                   and r.status in (401, 403, 409) and r.code != "window_full"
                   and r.node_id in self.orchestrator.registry]
        if refused:
            record_refusals(self.orchestrator, refused)
        tally: dict[str, int] = {}
        for r in final:
            tally[r.code] = tally.get(r.code, 0) + 1
        for code, count in tally.items():
            self.metrics.heartbeats.labels(code).inc(count)
        return final

    # -- actions for agents ---------------------------------------------------------------

    def acknowledge(self, node_id: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Store a node's signed acknowledgements of actions delivered to it, and its
        reports of actions it refused.

        Body: ``{"acks": [ack envelope, ...], "refusals": [report, ...]}``. Each ack is a
        ``wyneos.ack/1`` envelope signed by the node's enrolled key (``signed_actions``);
        one that is unsigned, signed by another key, or speaks for another node makes
        the whole request a 422 that changes nothing. Only an action waiting in the
        node's outbox, in force against the node, or acknowledged by it before (a
        status update) can be acknowledged; others are refused one by one (``refused``
        in the answer) and leave no trace. A report (``{"reason", "detail",
        "action_id"}``) says the node refused something handed to it as an action
        (unsigned, bad signature, expired, replayed...): it is logged, counted and kept
        (``/v1/actions`` ``refusals``). The status: 200 when something was acknowledged
        or reported (or nothing was asked), else 422. Writes the state file: call it
        from a worker thread.

        ``relayed`` (optional): what this node, as a relay of signed actions (``action_relay``), brings
        back from nodes it pushed signed actions to: ``[{"node", "acks", "refusals"}]``.
        Each node's acks are checked with *that node's* enrolled key, as if it had sent
        them itself (a relay cannot forge them), and only from a relay that was handed
        an action for that node; a relayed part that does not verify is refused on its
        own (its ``error`` in the answer's ``relayed``) and the relay named ``forged``
        (``RelayDesk``); the rest of the request is taken as usual.
        """
        data = _json_object(body)
        relayed = data.get("relayed", [])
        if not isinstance(relayed, list) or len(relayed) > 16:
            raise _Unprocessable("relayed", "expected a list of at most 16 relayed answers")
        for index, part in enumerate(relayed):
            if not isinstance(part, dict) or not isinstance(part.get("node"), str) \
                    or not set(part) <= {"node", "acks", "refusals"}:
                raise _Unprocessable(f"relayed[{index}]", "expected {node, acks, refusals}")
        status, answer = self._acknowledge(node_id, data, None)
        if relayed:
            answer["relayed"] = self._relayed(node_id, relayed)
            if status == 422 and any(r.get("acknowledged") or r.get("reported") for r in answer["relayed"]):
                status = 200
                answer = {k: v for k, v in answer.items() if k not in ("status", "code", "error", "field")}
        self.relay_desk.flush()
        return status, answer

    def _relayed(self, relay: str, relayed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Take the answers ``relay`` brought back from the nodes it relayed to."""
        out = []
        for part in relayed:
            target = part["node"]
            if target == relay or not self.relay_desk.was_handed(relay, target):
                out.append({"node": target[:128], "error": f"nothing was handed to {relay} for this node"})
                continue
            try:
                _, answer = self._acknowledge(target, {"acks": part.get("acks", []),
                                                       "refusals": part.get("refusals", [])}, relay)
            except (_Unprocessable, AuthError) as exc:
                self.relay_desk.forged(relay, target, str(exc))
                out.append({"node": target, "error": str(exc)})
                continue
            out.append({"node": target, **{k: v for k, v in answer.items()
                                           if k in ("acknowledged", "refused", "reported", "relay_named")}})
        return out

    def _acknowledge(self, node_id: str, data: dict[str, Any], via: str | None) -> tuple[int, dict[str, Any]]:
        """``acknowledge`` of one node's acks and reports (``via``: the relay that carried them)."""
        acks = data.get("acks", [])
        if not isinstance(acks, list) or len(acks) > 1000:
            raise _Unprocessable("acks", "expected a list of at most 1000 acknowledgements")
        reports = data.get("refusals", [])
        if not isinstance(reports, list) or len(reports) > MAX_REFUSALS:
            raise _Unprocessable("refusals", f"expected a list of at most {MAX_REFUSALS} reports")
        raw_key = self.keys.get(node_id)
        if raw_key is None:
            raise AuthError(401, f"node {node_id!r} is not enrolled", "not_enrolled")
        opened: list[dict[str, Any]] = []
        for index, ack in enumerate(acks):
            try:
                opened.append(sa.open_ack(ack, node_id, raw_key))
            except sa.Refused as exc:
                raise _Unprocessable(f"acks[{index}]", f"{exc.reason}: {exc.detail}"
                                     + (" (acknowledgements are wyneos.ack/1 envelopes signed by the node key)"
                                        if exc.reason == "unsigned" else "")) from None
        cleaned: list[tuple[str, str | None, str]] = []
        pushers: list[str | None] = []
        for index, report in enumerate(reports):
            if not isinstance(report, dict) or report.get("reason") not in _REFUSAL_CODES:
                raise _Unprocessable(f"refusals[{index}].reason", "expected one of " + ", ".join(sorted(_REFUSAL_CODES)))
            action_id, detail = report.get("action_id"), report.get("detail", "")
            if action_id is not None and (not isinstance(action_id, str) or not 0 < len(action_id) <= MAX_ACTION_ID):
                raise _Unprocessable(f"refusals[{index}].action_id", f"expected a string of 1-{MAX_ACTION_ID} characters")
            if not isinstance(detail, str) or len(detail) > MAX_ACK_DETAIL:
                raise _Unprocessable(f"refusals[{index}].detail", f"expected a string of at most {MAX_ACK_DETAIL} characters")
            try:
                (action_id or "").encode("utf-8")
                detail.encode("utf-8")
            except UnicodeEncodeError:
                raise _Unprocessable(f"refusals[{index}]", "not valid Unicode text") from None
            pusher = report.get("via")  # the relay that pushed what the node refused (it checked the push's signature)
            if pusher is not None and (not isinstance(pusher, str) or not 0 < len(pusher) <= 128):
                raise _Unprocessable(f"refusals[{index}].via", "expected a node id of 1-128 characters")
            cleaned.append((report["reason"], action_id, detail))
            pushers.append(pusher)
        issuances = {a["id"]: a.get("issued_at") for a in self.outbox.pending(node_id)}
        known = set(issuances) | self.view.in_force.get(node_id, frozenset())
        asked = [a["action_id"] for a in opened]
        with self.db_lock:
            known |= self.db.action_acks_of(node_id, (a for a in asked if a not in known))
        done: list[str] = []
        refused: list[dict[str, Any]] = []
        named: list[str] = []
        now = time.time()
        with self.db_lock:
            for index, (ack, envelope) in enumerate(zip(opened, acks)):
                action_id = ack["action_id"]
                if action_id not in known:
                    refused.append({"index": index, "action_id": action_id, "field": f"acks[{index}].action_id",
                                    "error": f"no action {action_id!r} was delivered to node {node_id!r}"})
                    continue
                waiting = issuances.get(action_id)
                if waiting is not None and ack["issued_at"] != waiting:  # an old ack of an earlier issuance
                    refused.append({"index": index, "action_id": action_id, "field": f"acks[{index}].issued_at",
                                    "error": f"acknowledges the issuance of {ack['issued_at']} of {action_id!r}, "
                                             f"not the one waiting ({waiting})"})
                    continue
                status = ack["status"]
                self.db.record_action_ack(action_id, node_id, status, ack["detail"], now)
                self.db.put_signed_ack(action_id, node_id, ack["issued_at"], envelope, now)
                if status != "ignored":
                    record_acks(self.orchestrator, [(node_id, status == "applied")])
                self.outbox.ack(node_id, action_id)
                self.relay_desk.acked(node_id, action_id, via)
                self.metrics.acks.labels(status).inc()
                log.info("node %s acknowledged action %s: %s%s", node_id, action_id, status,
                         f" (through relay {via})" if via else "")
                done.append(action_id)
            if cleaned:  # through a relay: said so; a refusal that means the relay altered it names the relay
                named_cleaned = []
                for (reason, action_id, detail), pusher in zip(cleaned, pushers):
                    if via is not None:
                        detail = f"(reported through relay {via}) {detail}"[:MAX_ACK_DETAIL]
                    culprit = self.relay_desk.refused(node_id, action_id, reason, detail, via, pusher)
                    if culprit is not None:
                        named.append(culprit)
                        detail = f"{detail} [relay {culprit} named: it altered the action]"[:MAX_ACK_DETAIL]
                    named_cleaned.append((reason, action_id, detail))
                cleaned = named_cleaned
                self.db.add_action_refusals(node_id, now, cleaned, _KEEP_REFUSALS)
            for reason, action_id, detail in cleaned:
                self.metrics.refusals.labels(reason).inc()
                log.warning("node %s refused an action handed to it (%s, action %s): %s", node_id, reason,
                            action_id, detail)
        self.metrics.outbox.set(self.outbox.depth())
        answer: dict[str, Any] = {"acknowledged": done, "refused": refused, "reported": len(cleaned)}
        if named:
            answer["relay_named"] = sorted(set(named))
        if refused and not done and not cleaned:
            first = refused[0]
            return 422, {"status": 422, "code": "unknown_action", "error": first["error"], "field": first["field"],
                         **answer}
        return 200, answer

    def signed_ack(self, action_id: str, node_id: str) -> dict[str, Any] | None:
        """The node-signed acknowledgement kept for ``action_id`` (None when there is none)."""
        with self.db_lock:
            return self.db.signed_ack(action_id, node_id)

    # -- committed state (reads) ---------------------------------------------------------

    def committed_actions(self) -> dict[str, Any]:
        """Committed decisions (reads the state file: call it from a worker thread).
        Replicas answer from the last committed view (``ha.reads``): never waiting on etcd."""
        if self.ha is not None:
            return {**self.ha.reads.actions(), "relays": self.relay_desk.recent()}
        with self.db_lock:
            answer = self.read_committed(self.db, 0)["actions"]
        return {**answer, "relays": self.relay_desk.recent()}

    def committed_ticks(self, limit: int) -> list[dict[str, Any]]:
        if self.ha is not None:
            return self.ha.reads.ticks(limit)
        with self.db_lock:
            return self.db.tick_summaries(limit)

    @staticmethod
    def read_committed(db: Any, ticks: int) -> dict[str, Any]:
        """The committed decisions (``/v1/actions``) and the last ``ticks`` tick summaries."""
        from wyneos_core.service.overview import with_causes

        last_tick = db.last_tick()
        in_force = db.actions("in_force")
        recent = db.recent_action_events(max(0, last_tick - 50), 500)
        acks = db.recent_action_acks(500)
        started = db.tick_times(a["first_tick"] for a in in_force)
        refusals = db.recent_action_refusals(200)
        return {"actions": {"committed_tick": last_tick, "in_force": with_causes(in_force, started), "events": recent,
                            "acks": acks, "refusals": refusals},
                "ticks": db.tick_summaries(ticks) if ticks else []}


def _relay_ack_ticks(orchestrator: Orchestrator) -> int:
    """``plugins.settings.relay.ack_ticks`` (default 5), checked (``relay.relay_settings``)."""
    from wyneos_core.service.action_relay import relay_settings

    return relay_settings(orchestrator.config)["ack_ticks"]


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
    except RecursionError:
        raise _Unprocessable("body", "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise _Unprocessable("body", "expected a JSON object")
    if b"\\u" in body:  # only a \u escape can make a lone surrogate (UTF-8 bytes cannot)
        where = bad_text(data)
        if where is not None:
            raise _Unprocessable(field_path(where) or "body", "not valid Unicode text (a lone surrogate escape)")
    return data


_FIELDS = frozenset(("node_id", "timestamp", "load", "metadata", "licence_ref", "observations", "metrics"))
_OBSERVATION_FIELDS = frozenset(("subject", "reachable", "rtt_ms", "last_seq", "age_s"))
_MAX_OBSERVATIONS = 64  # read at most; heartbeat.max_observations is checked with the heartbeat


def _heartbeat(item: SignedItem, ts: float, fp: str | None) -> Heartbeat:
    """The heartbeat in a verified item's body; ``AuthError`` / ``_Unprocessable`` when bad."""
    body = _json_object(item.body)
    node_id = body.get("node_id", item.node_id)
    if node_id != item.node_id:
        raise AuthError(403, f"heartbeat for {node_id!r} signed by {item.node_id!r}", "node_mismatch")
    if not _FIELDS.issuperset(body):
        unknown = sorted(set(body) - _FIELDS)
        raise _Unprocessable(unknown[0], "unknown field (known: node_id, timestamp, load, metadata, licence_ref, "
                                          "observations, metrics)")
    metadata = body.get("metadata")
    # made as checked: ``Service.accept`` queues it only after ``Registry.check`` passed
    return CheckedHeartbeat(node_id, body.get("timestamp", ts), body.get("load"), {} if metadata is None else metadata,
                            fp, body.get("licence_ref"), _observations(node_id, body.get("observations")),
                            body.get("metrics"))


def _observations(node_id: str, raw: Any) -> tuple[Observation, ...]:
    """The witness observations of a heartbeat body (signed with it: ``signed=True``)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > _MAX_OBSERVATIONS:
        raise _Unprocessable("observations", f"expected a list of at most {_MAX_OBSERVATIONS} observations")
    out = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not _OBSERVATION_FIELDS.issuperset(item) or "subject" not in item \
                or "reachable" not in item:
            raise _Unprocessable(f"observations[{index}]", "expected {subject, reachable, rtt_ms, last_seq, age_s}")
        age = item.get("age_s", 0.0)
        if isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age < 1e9:  # also catches nan
            raise _Unprocessable(f"observations[{index}].age_s", "expected seconds >= 0")
        if age > MAX_OBSERVATION_AGE:
            continue  # stale: what the witness saw then says nothing about now
        out.append(Observation(node_id, item["subject"], item["reachable"], item.get("rtt_ms"), item.get("last_seq"),
                               True))
    return tuple(out)


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
