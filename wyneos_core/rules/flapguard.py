"""The flap guard of predictive rules: a benign periodic burst causes no action.

A cron job that runs at 03:00 every night spikes CPU, I/O or disk for a few minutes;
an anomaly score or a short-window trend sees a failure coming every night. Two guards
stop it, both on rules whose condition calls a prediction helper
(``wyneos_core.rules.predictive``):

* **hold**: such a rule without its own ``for:`` must stay true for ``PREDICTIVE_FOR``
  (15 minutes) before it fires, so a burst shorter than that never fires;
* **periodic bursts**: for each (rule, node) the guard remembers when the condition's
  past episodes began, if they ended by themselves within ``max_burst`` (an hour). An
  episode that begins within ``tolerance`` (30 minutes) of the same time of day as one
  of them, on a later day, is a repeat of a benign burst: it is held back from the
  rule's state for as long as a benign burst lasts. If it lasts longer, it is no
  burst: the rule sees it from then on (a real failure at 03:00 is not hidden for more
  than ``max_burst``).

Memory: only nodes whose condition was ever true have an entry, each at most ``MEMORY``
onsets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["FlapGuard", "MEMORY", "PREDICTIVE_FOR"]

#: the ``for:`` of a predictive rule that names none
PREDICTIVE_FOR: Final = "15m"
#: past benign onsets remembered per (rule, node)
MEMORY: Final = 7


class FlapGuard:
    """Episodes of one predictive rule, per node; ``filter`` holds back periodic bursts."""

    __slots__ = ("period", "tolerance", "max_burst", "onset", "held", "benign", "suppressed_total")

    def __init__(self, period: float = 86400.0, tolerance: float = 1800.0, max_burst: float = 3600.0) -> None:
        self.period = period
        self.tolerance = tolerance
        self.max_burst = max_burst
        self.onset: dict[str, float] = {}  # node -> when its current episode began
        self.held: set[str] = set()  # nodes whose current episode is held back
        self.benign: dict[str, list[float]] = {}  # node -> onsets of past benign bursts
        self.suppressed_total = 0

    def _repeats(self, node_id: str, now: float) -> bool:
        for past in self.benign.get(node_id, ()):
            gap = now - past
            if gap < self.period - self.tolerance:
                continue
            phase = gap % self.period
            if min(phase, self.period - phase) <= self.tolerance:
                return True
        return False

    def filter(self, active: Iterable[str], now: float) -> list[str]:
        """The nodes the rule should see as active this tick (``active`` minus held bursts)."""
        active = list(active)
        current = set(active)
        onset = self.onset
        for node_id in [n for n in onset if n not in current]:  # episodes that ended
            began = onset.pop(node_id)
            self.held.discard(node_id)
            if now - began <= self.max_burst:
                kept = self.benign.setdefault(node_id, [])
                kept.append(began)
                del kept[:-MEMORY]
        out = []
        for node_id in active:
            began = onset.get(node_id)
            if began is None:
                began = onset[node_id] = now
                if self._repeats(node_id, now):
                    self.held.add(node_id)
                    self.suppressed_total += 1
            if node_id in self.held:
                if now - began <= self.max_burst:
                    continue
                self.held.discard(node_id)  # longer than a burst: not benign after all
            out.append(node_id)
        return out

    def forget(self, keep: set[str]) -> None:
        """Drop the nodes that left the cluster."""
        for table in (self.onset, self.benign):
            for node_id in [n for n in table if n not in keep]:
                del table[node_id]
        self.held &= keep
