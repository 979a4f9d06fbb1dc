"""The service around an orchestrator: its state, the tick thread, the published view.

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

``Service`` is made of parts, one concern each: ``enrolment.Enrolment`` (``enrol``),
``signed_intake.SignedIntake`` (``verify_all``, ``accept``: signed heartbeats) and
``action_acks.ActionAcks`` (``acknowledge``, ``signed_ack``); session heartbeats go
through ``session_intake``. Shared outcomes and errors are in ``outcomes``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from wyneos_core.config import ConfigError
from wyneos_core.loop import run
from wyneos_core.mesh import MeshError
from wyneos_core.model import ORIGIN, TickReport
from wyneos_core.registry import RegistryError
from wyneos_core.service import signed_actions as sa
from wyneos_core.service.action_acks import ActionAcks
from wyneos_core.service.applier import Applier
from wyneos_core.service.enrolment import Enrolment, hash_token, new_token
from wyneos_core.service.identity import KeyCache, NonceWindow
from wyneos_core.service.limits import RateLimiter
from wyneos_core.service.metrics import ServiceMetrics
from wyneos_core.service.orchestrator_key import OrchestratorKey, keyring_statement
from wyneos_core.service.outbox import AgentOutbox
from wyneos_core.service.outcomes import ENROL_PATH, HEARTBEAT_PATH, ItemResult, Unprocessable, Verified
from wyneos_core.service.sessions import SessionTable
from wyneos_core.service.settings import ServiceSettings
from wyneos_core.service.signed_intake import SignedIntake
from wyneos_core.service.view import ClusterView, NodeMap
from wyneos_core.tick import Orchestrator

# (re-exported: the names callers import from here)
__all__ = ["ENROL_PATH", "HEARTBEAT_PATH", "ClusterView", "ItemResult", "Service", "Unprocessable", "Verified",
           "hash_token", "new_token"]

log = logging.getLogger("wyneos.service")

_MESH_LIMIT = 2000  # nodes the mesh view draws at most
_MESH_DEMAND = 30.0  # seconds after a mesh request during which each tick prepares the mesh view
_MESH_ALWAYS = 5000  # up to this many mesh vertices each tick prepares the mesh view anyway
_ACK_PRUNE_EVERY = 10  # ticks between prunes of old acknowledgements
#: seconds a signed action envelope stays valid (signed again at half-life while pending)
ACTION_TTL = 3600.0


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


class Service(Enrolment, SignedIntake, ActionAcks):
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
        # relays' batches applied to the registry's columns as they come, between ticks (applier)
        self.applier = Applier(self)
        orchestrator.pm.register(self.applier, Applier.__wyneos_name__)
        # compliance mesh: each agent's signed neighbour list rides on the answer to its heartbeat
        from wyneos_core.service.neighbour_book import NeighbourBook

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
        self.metrics.observe_tick(report, self.orchestrator.missed_ticks, in_force, self.applier.taken)
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
        self.applier.start()

    def _run(self) -> None:
        try:
            run(_Ticking(self), interval=self.interval, stop=self._stop)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - reported by /healthz
            self.tick_error = f"{type(exc).__name__}: {exc}"
            log.exception("tick loop stopped")

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.applier.stop(timeout)
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

