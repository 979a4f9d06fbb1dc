"""Leader election on an etcd lease, in the manner of client-go's leaderelection.

One ``ElectionConfig`` holds the three timings and checks their invariants when it is
made (Kubernetes' defaults: lease 15 s, renew deadline 10 s, retry 2 s):

- ``lease_duration``: the TTL of the etcd lease the leader key is attached to. If the
  leader stops renewing, the key vanishes at most this long after the last renewal
  etcd saw, and another replica can take over.
- ``renew_deadline``: how long the leader keeps deciding without a successful renewal.
  Measured from when the last successful renewal was *sent* (so never later than etcd
  saw it) on the monotonic clock (wall-clock jumps do not move it); it is shorter than
  the lease, so a leader that cannot renew stops deciding before its lease can expire.
- ``retry_period``: how often a candidate tries to take the key and a leader renews.

Campaigning is one transaction: "if the key does not exist, put it with my lease".
The winner's key has a create revision no other term can have; that number is the
fencing token. Each decision is written in a transaction comparing the key's create
revision with the token (``wyneos_core.ha.store``), so even a leader that was paused
or partitioned past its lease cannot write once another leader took over: etcd refuses
the transaction. The elector only answers "may I decide?"; it never decides itself.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wyneos_core.ha.etcd import EtcdClient, EtcdError, cmp_create, put_op, range_op

__all__ = ["ElectionConfig", "LeaderElector", "Leadership"]

log = logging.getLogger("wyneos.ha.election")

#: client-go's JitterFactor: the renew deadline must leave room for retries with jitter
JITTER_FACTOR = 1.2
#: the shortest lease etcd grants (its minimum TTL with the default election timeout)
MIN_LEASE = 2.0


@dataclass(frozen=True, slots=True)
class ElectionConfig:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        for name in ("lease_duration", "renew_deadline", "retry_period"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name} must be a number of seconds above 0, got {value!r}")
        if self.lease_duration < MIN_LEASE:
            raise ValueError(f"lease_duration must be at least {MIN_LEASE:g} s (etcd's shortest lease), "
                             f"got {self.lease_duration!r}")
        if self.lease_duration <= self.renew_deadline:
            raise ValueError(f"lease_duration ({self.lease_duration:g}) must be greater than renew_deadline "
                             f"({self.renew_deadline:g}): a leader must stop deciding before its lease can expire")
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ValueError(f"renew_deadline ({self.renew_deadline:g}) must be greater than {JITTER_FACTOR} x "
                             f"retry_period ({self.retry_period:g}): room for at least one retry")

    @property
    def ttl(self) -> int:
        """The lease TTL asked of etcd (whole seconds, rounded up)."""
        return math.ceil(self.lease_duration)


@dataclass(frozen=True, slots=True)
class Leadership:
    """Who leads, as last seen: the identity in the leader key and its term (the key's
    create revision, the fencing token)."""

    identity: dict[str, Any]
    term: int


class LeaderElector:
    """Campaigns for ``key`` with ``identity`` and keeps the lease while leading.

    :param on_started_leading: called (on the elector thread) with the term won.
    :param on_stopped_leading: called when leadership is lost or given up.
    :param clock: a monotonic clock (tests may pass their own).
    """

    def __init__(self, client: EtcdClient, key: str, identity: dict[str, Any], config: ElectionConfig, *,
                 on_started_leading: Callable[[int], None] | None = None,
                 on_stopped_leading: Callable[[], None] | None = None,
                 on_new_leader: Callable[[Leadership | None], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.key = key
        self.identity = dict(identity)
        self.config = config
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_new_leader = on_new_leader
        self.clock = clock
        self._lock = threading.Lock()
        self._lease = 0
        self._term = 0  # > 0 while leading
        self._renewed_at = -math.inf  # monotonic time the last successful renewal was sent
        self._leader: Leadership | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.terms_won = 0

    # -- what the service asks -------------------------------------------------------------

    def may_decide(self) -> int | None:
        """The fencing token while this replica leads and its renew deadline has not
        passed; else None (then it must not decide)."""
        with self._lock:
            if self._term and self.clock() - self._renewed_at < self.config.renew_deadline:
                return self._term
            return None

    @property
    def leading(self) -> bool:
        return self.may_decide() is not None

    @property
    def leader(self) -> Leadership | None:
        """The leader as last seen (this replica's own term while it leads)."""
        return self._leader

    def step_down(self, why: str) -> None:
        """Stop leading now (a fenced write showed another term exists)."""
        self._lose(why, revoke=True)

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="wyneos-elector", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop campaigning; a leader gives its key up at once (revokes its lease)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._lose("stopping", revoke=True)

    def _run(self) -> None:
        retry = self.config.retry_period
        while not self._stop.is_set():
            try:
                if self._term:
                    self._renew()
                else:
                    self._campaign()
            except Exception:  # noqa: BLE001 - the elector never dies; it retries
                log.exception("leader election step failed")
            if self._term:
                # a leader past its renew deadline stops deciding even if etcd never answers
                with self._lock:
                    late = self.clock() - self._renewed_at >= self.config.renew_deadline
                if late:
                    self._lose("renew deadline passed", revoke=False)
            self._stop.wait(retry)

    def _campaign(self) -> None:
        cfg = self.config
        sent = self.clock()
        try:
            lease, ttl = self.client.grant(cfg.ttl, timeout=cfg.retry_period)
        except EtcdError as exc:
            log.debug("campaign: %s", exc)
            return
        value = json.dumps(self.identity, sort_keys=True)
        try:
            won, answer = self.client.txn([cmp_create(self.key, 0)], [put_op(self.key, value, lease)],
                                          [range_op(self.key)])
        except EtcdError as exc:
            log.debug("campaign: %s", exc)
            self._forget_lease(lease)
            return
        if won:
            term = int(answer.get("header", {}).get("revision", 0))
            with self._lock:
                self._lease, self._term, self._renewed_at = lease, term, sent
                self.terms_won += 1
            self._seen(Leadership(self.identity, term))
            log.warning("leading with term %d (lease %ds)", term, ttl)
            if self.on_started_leading is not None:
                self.on_started_leading(term)
            return
        self._forget_lease(lease)
        kvs = []
        for resp in answer.get("responses", []):
            kvs.extend(resp.get("response_range", {}).get("kvs", []))
        if kvs:
            from wyneos_core.ha.etcd import KV

            kv = KV(kvs[0])
            try:
                identity = json.loads(kv.value)
            except ValueError:
                identity = {"id": kv.value.decode(errors="replace")}
            self._seen(Leadership(identity if isinstance(identity, dict) else {"id": str(identity)},
                                  kv.create_revision))
        else:
            self._seen(None)

    def _renew(self) -> None:
        cfg = self.config
        sent = self.clock()
        left = cfg.renew_deadline - (sent - self._renewed_at)
        try:
            ttl = self.client.keepalive(self._lease, timeout=max(0.1, min(cfg.retry_period, left)))
        except EtcdError as exc:
            log.warning("cannot renew the leader lease: %s", exc)
            return
        if ttl <= 0:
            self._lose("the lease expired", revoke=False)
            return
        with self._lock:
            if self._term:
                self._renewed_at = sent

    def _lose(self, why: str, *, revoke: bool) -> None:
        with self._lock:
            term, lease = self._term, self._lease
            self._term = 0
            self._lease = 0
        if lease and revoke:
            self._forget_lease(lease)
        if term:
            log.warning("stopped leading term %d: %s", term, why)
            self._seen(None)
            if self.on_stopped_leading is not None:
                self.on_stopped_leading()

    def _forget_lease(self, lease: int) -> None:
        try:
            self.client.revoke(lease, timeout=self.config.retry_period)
        except EtcdError:
            pass  # it expires by itself

    def _seen(self, leader: Leadership | None) -> None:
        before = self._leader
        self._leader = leader
        if (before is None) != (leader is None) or (before and leader and before.term != leader.term):
            if self.on_new_leader is not None:
                self.on_new_leader(leader)
