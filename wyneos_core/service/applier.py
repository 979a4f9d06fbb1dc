"""Queued heartbeats applied to the registry's columns between ticks, not only by the tick.

Relays' batches are checked and queued as ``HeartbeatColumns`` by the batch thread
(``session_intake.SessionIntake.accept_usual``); before, they waited in the queue for
the next tick (up to ``tick.interval``). ``Applier`` applies them as soon as they are
queued: the batch thread wakes it, and its own thread takes ``Service.lock`` (the lock
every tick holds from start to end, so an apply never runs during a tick: no tick sees
half a batch, and a tick in progress delays the apply until it ends), drains the queue
and applies what it held with ``Registry.accept_all``, in the order it was queued, as
the tick's heartbeat step would (the same checks; ``trusted`` as for the builtin
intake). Node statuses still move at the tick (``Registry.refresh_changes``), which
reads the columns these applies wrote.

What was applied between two ticks is reported by the next tick: its count in
``TickReport.heartbeats_accepted`` and the registry's refusals in
``heartbeats_rejected`` (added by this plugin's ``wyneos_heartbeat``, the tick's first
step, before any plugin reads them). The metric ``wyneos_heartbeats_applied_total``
counts them when applied (``taken``: the tick then counts only its own), as
``wyneos_heartbeats_rejected_by_registry_total`` does the refusals.

Only a server that decides alone applies between ticks (no replicas: a follower's
registry is the leader's committed state).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from wyneos_core import hookimpl

if TYPE_CHECKING:
    from wyneos_core.service.core import Service

__all__ = ["Applier"]

log = logging.getLogger("wyneos.service")


class Applier:
    """Applies the intake queue between ticks (see the module); ``wake`` after queueing."""

    __wyneos_name__ = "heartbeat-applier"

    def __init__(self, service: Service) -> None:
        self.service = service
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mine = threading.Lock()  # the carried counts below
        self.accepted = 0  # applied since the last tick's heartbeat step
        self.rejected: list[dict[str, Any]] = []  # refused by the registry since then
        #: (accepted, rejected) the running or last tick took over (already in the metrics)
        self.taken = (0, 0)
        self.applies = 0  # applies that applied something (tests look)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="wyneos-apply", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """Heartbeats were queued: apply them soon."""
        self._wanted.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wanted.wait()
            self._wanted.clear()
            if self._stop.is_set():
                return
            try:
                self.apply()
            except Exception:  # noqa: BLE001 - the tick applies what is left; logged
                log.exception("applying queued heartbeats failed (the tick applies them)")

    def apply(self) -> int:
        """Apply what is queued now (waiting for a running tick to end): how many."""
        service = self.service
        if service.ha is not None:
            return 0
        orch = service.orchestrator
        with service.lock:
            if not len(orch.intake):
                return 0
            drained = orch.intake.drain()
            accepted, rejected = orch.registry.accept_all(drained, orch.clock(), trusted=True)
            refused = [e.to_dict() for e in rejected]
            with self._mine:
                self.accepted += accepted
                self.rejected.extend(refused)
            self.applies += 1
            # counted under the lock: a tick that reports them comes after (and subtracts them)
            service.metrics.applied.inc(accepted)
            if refused:
                service.metrics.registry_rejected.inc(len(refused))
        return accepted

    @hookimpl(tryfirst=True)
    def wyneos_heartbeat(self, ctx: Any) -> list[Any]:
        """The tick's heartbeat step: what was applied since the last tick goes into its report."""
        with self._mine:
            accepted, rejected = self.accepted, self.rejected
            self.accepted, self.rejected = 0, []
        self.taken = (accepted, len(rejected))
        ctx.report.heartbeats_accepted += accepted
        ctx.report.heartbeats_rejected.extend(rejected)
        return []
