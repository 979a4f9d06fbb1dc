"""One ``wyneos serve`` replica among several on etcd: leads and decides, or follows.

``Replica`` is what ``Service`` asks each tick slot:

- **leader** (the elector's renew deadline has not passed): on the first tick of a
  term it takes over (``take_over``): the tick number, node registrations, the
  decisions in force and the agents' outboxes come from etcd, and every node that was
  heard from gets a full grace period (its last heartbeat counts as now, as the
  Kubernetes node controller does after a restart), so no failover makes a node
  stale, offline or isolated. Then it ticks; the tick's decisions are written under
  the fence. A refused (fenced) write means another term exists: the tick's agent
  notices are dropped, the refusal is counted and logged, and the replica steps down.
- **follower**: it does not tick. Each slot it reads the committed state (tick number,
  node registrations, keys enrolled at any replica, the actions in force and the
  acknowledgements) so its read endpoints, its agents' action lists and its heartbeat
  checks stay current. Heartbeats it accepts are forwarded to the leader
  (``HeartbeatForwarder``): each item keeps its node's own signature, so the leader
  verifies it as if the node had sent it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wyneos_core import hookimpl
from wyneos_core.config import Config, ConfigError
from wyneos_core.ha.carry import Carried
from wyneos_core.ha.reads import TICKS_KEPT, CommittedReads
from wyneos_core.ha.watch import MirrorClient, PrefixMirror
from wyneos_core.ha.election import ElectionConfig, Leadership, LeaderElector
from wyneos_core.ha.etcd import EtcdError, parse_endpoints, parse_store_url, uses_tls
from wyneos_core.ha.store import EtcdStateStore
from wyneos_core.model import NodeStatus
from wyneos_core.safeio import read_regular_file
from wyneos_core.store import StoreError, register_backend

if TYPE_CHECKING:
    from wyneos_core.model import TickReport
    from wyneos_core.service.core import Service
    from wyneos_core.service.identity import SignedItem

__all__ = ["HeartbeatForwarder", "Replica", "election_config", "open_etcd_store"]

log = logging.getLogger("wyneos.ha")

#: how a failed write of the state plugin is described in a tick report
_STORE_ERRORS = ("EtcdUnavailable:", "EtcdError:", "FencedWrite:", "StoreError:")
_HEARD = (NodeStatus.ONLINE, NodeStatus.STALE)


def _field(config: Config, name: str) -> dict[str, Any]:
    return {"file": config.source, "field": f"state.etcd.{name}"}


def open_etcd_store(config: Config) -> EtcdStateStore:
    """The etcd store the config names (``state.etcd``); a bad value is a ``ConfigError``
    naming the field, an unreachable cluster a ``StoreError``."""
    etcd = config["state"]["etcd"]
    endpoints_text = etcd.get("url")
    try:
        endpoints = parse_store_url(endpoints_text) if endpoints_text else parse_endpoints(etcd["endpoints"])
    except ValueError as exc:
        raise ConfigError(str(exc), **_field(config, "endpoints")) from None
    prefix = etcd.get("prefix") or f"/wyneos/{config['cluster']}/"
    if not prefix.startswith("/"):
        raise ConfigError(f"must start with '/', got {prefix!r}", **_field(config, "prefix"))
    election_config(config)  # refuse bad timings before anything starts
    return EtcdStateStore.open(endpoints, prefix, timeout=float(etcd["timeout"]), **client_options(config))


def client_options(config: Config) -> dict[str, Any]:
    """TLS and authentication of the etcd client (``state.etcd``): files resolved
    against the config's directory and checked, the password read from its file."""
    etcd = config["state"]["etcd"]
    out: dict[str, Any] = {"tls": uses_tls(etcd.get("endpoints") or [])}  # also with ca_file or cert_file
    for name in ("ca_file", "cert_file", "key_file"):
        if etcd.get(name):
            path = config.resolve(etcd[name])
            if not os.path.isfile(path):
                raise ConfigError(f"{path}: no such file", **_field(config, name))
            out[name] = str(path)
    if (etcd.get("cert_file") is None) != (etcd.get("key_file") is None):
        raise ConfigError("a client certificate needs both cert_file and key_file", **_field(config, "cert_file"))
    if etcd.get("username") is not None or etcd.get("password_file") is not None:
        if etcd.get("username") is None or etcd.get("password_file") is None:
            raise ConfigError("etcd authentication needs both username and password_file",
                              **_field(config, "username" if etcd.get("username") is None else "password_file"))
        path = config.resolve(etcd["password_file"])
        try:
            password = read_regular_file(path, 4096).decode("utf-8").strip("\r\n")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read the etcd password: {exc}", **_field(config, "password_file")) \
                from None
        if not password:
            raise ConfigError(f"{path}: the etcd password file is empty", **_field(config, "password_file"))
        out["username"], out["password"] = etcd["username"], password
    return out


def election_config(config: Config) -> ElectionConfig:
    etcd = config["state"]["etcd"]
    try:
        return ElectionConfig(float(etcd["lease_duration"]), float(etcd["renew_deadline"]),
                              float(etcd["retry_period"]))
    except ValueError as exc:
        name = str(exc).split(" ", 1)[0].strip("(")
        raise ConfigError(str(exc), **_field(config, name if name in etcd else "lease_duration")) from None


def _grace(node: Any) -> bool:
    """Whether a new leader grants ``node`` a full grace period: only a node the
    committed state shows as heard (online or stale) and not isolated. The grace period
    means "no new severe action until it has passed", never "every node was just
    heard": a node committed offline or isolated keeps its committed last heartbeat, so
    a dead node stays offline and isolated across a failover (heartbeats are not in
    etcd: the committed status is the cluster's last word on it)."""
    return node.last_seen is not None and not node.isolated and node.status in _HEARD


class _ReportTap:
    """Hands the report of the tick being written to ``Carried`` (before the state
    plugin writes it: ``tryfirst``), so its licence and trust summaries go with it."""

    __wyneos_name__ = "replica-report-tap"

    def __init__(self, carried: Carried) -> None:
        self.carried = carried

    @hookimpl(tryfirst=True)
    def wyneos_tick_report(self, ctx: Any, report: TickReport) -> None:
        self.carried.report = report


def _committed_report(tick: int, started_at: float, registry: Any, view: dict[str, Any] | None) -> TickReport:
    """A follower's report of the committed state: node snapshots, and the licence,
    rule and trust summaries the leader committed with its last tick (each licence
    result checked: a bad one is left out)."""
    from wyneos_core.model import LicenceResult, TickReport

    licences = {}
    view = view if isinstance(view, dict) else {}
    for node_id, raw in dict(view.get("licences") or {}).items():
        try:
            result = LicenceResult(**{**raw, "features": tuple(raw.get("features") or ())})
        except (TypeError, ValueError):
            continue
        if result.problem() is None and result.node_id == node_id:
            licences[node_id] = result
    rules = view.get("rule_summary")
    trust = view.get("trust")
    return TickReport(tick=tick, started_at=float(started_at or 0.0), nodes=[n.snapshot() for n in registry],
                      licences=licences, rule_summary=rules if isinstance(rules, dict) else {},
                      trust=trust if isinstance(trust, dict) else {},
                      notes=["committed state as a follower reads it (this replica did not run the tick)"])


def _issued(store: EtcdStateStore, rows: list[dict[str, Any]]) -> dict[int, int]:
    """Issuance times (ms) of actions by their first tick: every replica hands an action
    to agents with the same ``issued_at``, so an agent never takes it for a new one."""
    return {t: int(at * 1000) for t, at in store.tick_times(r["first_tick"] for r in rows).items()}


class HeartbeatForwarder:
    """Carries heartbeats a follower accepted to the leader, in batches, on one thread.

    Bounded: at most ``max_items`` wait (the oldest go first when the leader is
    unknown or unreachable for long: a heartbeat is soft state, the next one replaces
    it). Each POST has a timeout.
    """

    def __init__(self, leader_url: Any, max_items: int = 20000, batch: int = 2000, timeout: float = 5.0) -> None:
        self._leader_url = leader_url  # callable: the leader's URL or None
        self._items: deque[dict[str, str]] = deque(maxlen=max_items)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.batch = batch
        self.timeout = timeout
        self.forwarded = 0
        self.failed = 0
        self._thread: threading.Thread | None = None

    def put(self, items: Sequence[SignedItem]) -> None:
        for it in items:
            self._items.append({"node": it.node_id, "timestamp": it.timestamp, "nonce": it.nonce,
                                "signature": it.signature, "body": it.body.decode("utf-8")})
        self._wake.set()

    def put_sessions(self, items: Sequence[tuple[str, int, str, bytes]]) -> None:
        """Session heartbeats as ``(session id, seq, mac, body)``: the leader takes the
        session up from its ticket and checks the MAC itself."""
        for sid, seq, tag, body in items:
            self._items.append({"session": sid, "seq": seq, "mac": tag, "body": body.decode("utf-8")})
        self._wake.set()

    def depth(self) -> int:
        return len(self._items)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wyneos-forward", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while self._items and not self._stop.is_set():
                url = self._leader_url()
                if url is None:
                    break
                chunk = [self._items.popleft() for _ in range(min(self.batch, len(self._items)))]
                body = json.dumps({"heartbeats": chunk}).encode()
                request = urllib.request.Request(url.rstrip("/") + "/v1/heartbeats", data=body, method="POST",
                                                 headers={"content-type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 - http only
                        answer.read(1 << 20)
                    self.forwarded += len(chunk)
                except urllib.error.HTTPError as exc:  # refused items are refused for good
                    self.forwarded += len(chunk)
                    log.debug("leader refused forwarded heartbeats: %s", exc)
                except (OSError, ValueError) as exc:
                    self.failed += len(chunk)
                    log.info("cannot forward %d heartbeat(s) to the leader %s: %s", len(chunk), url, exc)
                    self._stop.wait(0.5)
                    break


class Replica:
    """The leadership side of a ``Service`` whose store is etcd."""

    def __init__(self, service: Service, store: EtcdStateStore, config: ElectionConfig,
                 replica_id: str | None = None, url: str | None = None) -> None:
        self.service = service
        self.store = store
        self.config = config
        self.id = replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self.url = url
        store.writer = self.id
        self.carried = Carried(service.orchestrator)
        orch_store = service.orchestrator.store
        if isinstance(orch_store, EtcdStateStore):  # the tick writes through it: same fence, same name
            orch_store.writer = self.id
            orch_store.carry = self.carried.collect
            orch_store.more_nodes = self._nodes_changed
            orch_store.notices = service.outbox.staged
        self._node_written: dict[str, str] = {}
        self.elector: LeaderElector | None = None
        self.forwarder = HeartbeatForwarder(self._leader_url)
        self._term_synced = 0
        self._lock = threading.Lock()
        self.leader_changes = 0
        self.fenced_refused = 0
        self.follow_error: str | None = None
        self._won = threading.Event()  # set when a term is won: a waiting follower slot leads at once
        service.orchestrator.pm.register(_ReportTap(self.carried), _ReportTap.__wyneos_name__)
        #: the last tick etcd holds as committed (what /healthz reports)
        self.committed_tick = 0
        reader = store.reopen()
        self.reads = CommittedReads(lambda: service.read_committed(reader, TICKS_KEPT), service.interval)
        #: what a follower reads: etcd's state mirrored by one watch (``ha.watch``)
        self.mirror = PrefixMirror(store.client, store.prefix, retry=config.retry_period)
        self.mirrored = store.reopen()
        self.mirrored.client = MirrorClient(store.client, self.mirror)  # type: ignore[assignment]
        self.mirrored.memo = {}

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self.elector is None:
            identity = {"id": self.id, "url": self.url}
            self.elector = LeaderElector(self.store.client, self.store.fence.key, identity, self.config,
                                         on_started_leading=self._started, on_stopped_leading=self._stopped,
                                         on_new_leader=self._new_leader)
            self.elector.start()
            self.forwarder.start()
            self.reads.start()
            self.mirror.start()

    def interrupt(self) -> None:
        """End a follower slot's wait for leadership now (the service is stopping)."""
        self._won.set()

    def stop(self) -> None:
        self.mirror.stop()
        self.reads.stop()
        self.forwarder.stop()
        if self.elector is not None:
            self.elector.stop()

    def _started(self, term: int) -> None:
        self.store.fence.token = term
        self._won.set()

    def _stopped(self) -> None:
        self.store.fence.token = None

    def _new_leader(self, leader: Leadership | None) -> None:
        if leader is not None:
            with self._lock:
                self.leader_changes += 1
            self.service.metrics.leader_changes.inc()

    def _nodes_changed(self) -> list[Any]:
        """Nodes whose metadata, licence or isolation changed since this term last wrote
        them (status changes are written anyway): what a new leader decides on must be
        what the last one saw, not the metadata of a much older heartbeat."""
        out = []
        written = self._node_written
        for node in self.service.orchestrator.registry:
            mark = json.dumps([node.metadata, node.licence_ref, node.isolated, node.status.value], sort_keys=True,
                              default=str)
            if written.get(node.id) != mark:
                written[node.id] = mark
                out.append(node.snapshot())
        return out

    def _fresh_metadata(self) -> None:
        """Registrations as etcd holds them, the config's metadata on top (as at a fresh
        start): a replica's own older copy never outlives what the leader wrote since."""
        orch = self.service.orchestrator
        configured = {spec["id"]: spec["metadata"] for spec in orch.config["nodes"]}
        for node in orch.registry:
            node.metadata = dict(configured.get(node.id) or {})

    def _leader_url(self) -> str | None:
        leader = self.elector.leader if self.elector is not None else None
        if leader is None or leader.identity.get("id") == self.id:
            return None
        url = leader.identity.get("url")
        return url if isinstance(url, str) and url.startswith("http") else None

    # -- what the service asks -------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.elector is not None and self.elector.leading

    @property
    def role(self) -> str:
        return "leader" if self.leading else "follower"

    def leader_info(self) -> dict[str, Any] | None:
        leader = self.elector.leader if self.elector is not None else None
        if leader is None:
            return None
        return {"id": leader.identity.get("id"), "url": leader.identity.get("url"), "term": leader.term}

    def watch_info(self) -> dict[str, Any]:
        """The follower's etcd watch, for /healthz: synced, revision, events, reloads."""
        m = self.mirror
        return {"synced": m.synced, "revision": m.revision, "events": m.events, "reloads": m.reloads,
                "error": m.error}

    def observe_role(self) -> None:
        """``wyneos_role`` and ``wyneos_leader_info`` as of now."""
        self.service.metrics.observe_role(self.role, self.leader_info())

    def forward(self, items: Sequence[SignedItem]) -> None:
        self.forwarder.put(items)

    def forward_sessions(self, items: Sequence[tuple[str, int, str, bytes]]) -> None:
        self.forwarder.put_sessions(items)

    def tick(self) -> TickReport | None:
        """One tick slot: lead (take over first in a new term) or follow."""
        term = self.elector.may_decide() if self.elector is not None else None
        self.observe_role()
        if term is None:
            started = time.monotonic()
            self._won.clear()
            self.follow()
            # the rest of this slot: a term won now is led at once, not one tick later
            if not self._won.wait(max(0.0, 0.8 * self.service.interval - (time.monotonic() - started))):
                return None
            term = self.elector.may_decide() if self.elector is not None else None
            if term is None:
                return None
        if term != self._term_synced:
            try:
                self.take_over()
            except (EtcdError, StoreError) as exc:
                log.warning("cannot take over (term %d): %s", term, exc)
                return None
            self._term_synced = term
        service = self.service
        fence = self.store.fence
        refused_before, failed_before = fence.refused, fence.failed
        service.outbox.hold()
        try:
            report = service.tick_now()
        except (EtcdError, StoreError) as exc:  # reading etcd failed: nothing decided
            service.outbox.release(keep=False)
            log.warning("tick not run: %s", exc)
            self._term_synced = 0
            return None
        except BaseException:
            service.outbox.release(keep=False)
            raise
        fenced = fence.refused > refused_before
        failed = fence.failed > failed_before or any(
            e.plugin == "state" and e.error.startswith(_STORE_ERRORS) for e in report.errors)
        service.outbox.release(keep=not (fenced or failed))
        if not (fenced or failed) and report.tick > self.committed_tick:
            self.committed_tick = report.tick
            self.reads.poke()
        if fenced:
            self.fenced_refused += 1
            service.metrics.fenced_writes.inc()
            log.warning("tick %d was not committed: another leader took over; stepping down", report.tick)
            if self.elector is not None:
                self.elector.step_down("a fenced write was refused")
        if fenced or failed:
            # memory ran ahead of what etcd holds: start again from etcd before deciding again
            log.warning("tick %d: its decisions may not be committed; reading etcd again", report.tick)
            self._term_synced = 0
        return report

    def take_over(self) -> None:
        """Start a term from what etcd holds (see the module docstring)."""
        service = self.service
        orch = service.orchestrator
        store = self.store
        tick = store.last_tick()
        rows = store.actions("in_force")
        notices = store.notice_rows()
        acked = {(a["action_id"], a["node_id"]) for a in store.action_acks()}
        issued = _issued(store, rows)
        carried = store.carried()
        resealed = store.reseal()  # after a rotation: the previous key can be retired
        if resealed:
            log.warning("signed %d enrolment value(s) again with the current orchestrator key", resealed)
        service.refresh_keys()
        orch.start()  # plugins ready (rulesets loaded) before their state is put back
        with service.lock:
            self.carried.forget()
            self._node_written.clear()
            restored = self.carried.restore(carried)
            orch.tick_number = self.committed_tick = tick
            self._fresh_metadata()
            store.restore_nodes(orch.registry)
            now = orch.clock()
            for node in orch.registry:
                if _grace(node):  # committed as heard: a full grace period from now
                    node.last_seen = max(node.last_seen, now)  # type: ignore[type-var]
                if node.id in orch.mesh:
                    if node.isolated and not orch.mesh.is_isolated(node.id):
                        orch.mesh.isolate(node.id)
                    elif not node.isolated and orch.mesh.is_isolated(node.id):
                        orch.mesh.reinstate(node.id)
            orch._decide_state = None  # type: ignore[attr-defined] # rebuilt from etcd by the next tick
            orch._state_primed = False  # type: ignore[attr-defined] # the first tick writes every node row
            # ticks a failed write left waiting in memory are not written later: etcd holds
            # what was committed, and a stale tick written under a newer term would undo it
            orch._state_backlog = None  # type: ignore[attr-defined]
            service.outbox.replace(rows, acked, issued, notices)
            service.publish_view()
        log.warning("replica %s leads from tick %d: %d action(s) in force, %d node(s), carried over: %s", self.id,
                    tick, len(rows), len(orch.registry), ", ".join(restored) or "nothing")

    def follow(self) -> None:
        """Read the committed state (a follower's tick slot); etcd trouble is reported
        by /healthz, never raised."""
        service = self.service
        orch = service.orchestrator
        store = self.mirrored  # from the watch's copy: no etcd round trip
        try:
            tick = store.last_tick()
            rows = store.actions("in_force")
            notices = store.notice_rows()
            acked = {(a["action_id"], a["node_id"]) for a in store.action_acks()}
            issued = _issued(store, rows)
            view = store.committed_view()
            started_at = store.tick_times([tick]).get(tick, 0.0)
            trust = {r["node_id"]: r for r in store.trust_rows()}
            service.refresh_keys()
            with service.lock:
                orch.tick_number = self.committed_tick = tick
                self._fresh_metadata()
                store.restore_nodes(orch.registry)
                for node in orch.registry:
                    row = trust.get(node.id)
                    if row is not None:
                        node.trust, node.trust_tier = row.get("trust"), row.get("tier")
                service.outbox.replace(rows, acked, issued, notices)
                report = _committed_report(tick, started_at, orch.registry, view)
                # the gauges first, then the view: /metrics is never older than /v1/nodes
                service.metrics.observe_committed(report, rows)
                service.publish_committed(report, rows)
            self.follow_error = None
        except (EtcdError, StoreError) as exc:
            self.follow_error = str(exc)[:300]
            log.info("follower cannot read etcd: %s", exc)
        self._term_synced = 0


register_backend("etcd", open_etcd_store)
