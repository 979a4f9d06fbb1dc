"""What the predict step leaves for the rest of the tick: the ``Predictions`` protocol.

The builtin predict plugin (``wyneos_predict``) puts one object satisfying ``Predictions``
in ``ctx.scratch[SCRATCH_KEY]`` before rules are evaluated. The rule helpers
``forecast()``, ``time_to()``, ``anomaly()``, ``trend()`` and ``node.metrics.NAME`` read
it (docs/prediction.md). Every method is total: an unknown node or metric, or too little
history to say anything, gives ``None`` (a rule sees missing), never an exception.
"""

from __future__ import annotations

from typing import Any, Final, Protocol, runtime_checkable

__all__ = ["Predictions", "SCRATCH_KEY"]

#: where in ``TickContext.scratch`` the tick's predictions are left
SCRATCH_KEY: Final = "predict"


@runtime_checkable
class Predictions(Protocol):
    """Per-node, per-metric answers of the detectors for this tick."""

    def latest(self, node_id: str, metric: str) -> float | None:
        """The latest value the node reported for the metric."""

    def forecast(self, node_id: str, metric: str, horizon_s: float) -> float | None:
        """The value expected ``horizon_s`` seconds from now."""

    def time_to(self, node_id: str, metric: str, level: float) -> float | None:
        """Seconds until the metric is expected to reach ``level``: a level above the
        latest value only by rising (None if it is flat or falling), one at or below it by
        falling (0 if it is not falling: already there)."""

    def anomaly(self, node_id: str, metric: str) -> float | None:
        """How unusual the latest value is, in [0, 1]."""

    def trend(self, node_id: str, metric: str) -> float | None:
        """The metric's current slope, in units per second."""

    def evidence(self, node_id: str, metric: str) -> dict[str, Any]:
        """The explanation of a finding: at least ``metric``, ``observed``, ``expected``
        (a ``[low, high]`` band) and ``horizon_s``; empty if nothing is known."""
