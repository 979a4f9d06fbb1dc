"""A small in-memory ``Predictions`` for rule tests: a straight line through each series."""

from __future__ import annotations

import math
from typing import Any

from wyneos_core import hookimpl
from wyneos_core.predict.interface import SCRATCH_KEY, Predictions


class LinePredictions:
    """Per (node, metric) the points given; slope by least squares, anomaly from the
    latest point's distance to the line in standard deviations of the residuals."""

    def __init__(self, series: dict[tuple[str, str], list[tuple[float, float]]]) -> None:
        self.series = series

    def _fit(self, node_id: str, metric: str) -> tuple[float, float, float, float] | None:
        points = self.series.get((node_id, metric))
        if not points:
            return None
        t_last, v_last = points[-1]
        if len(points) < 2:
            return v_last, 0.0, 0.0, t_last
        n = len(points)
        mt = sum(t for t, _ in points) / n
        mv = sum(v for _, v in points) / n
        sxx = sum((t - mt) ** 2 for t, _ in points)
        slope = 0.0 if sxx == 0 else sum((t - mt) * (v - mv) for t, v in points) / sxx
        resid = [v - (mv + slope * (t - mt)) for t, v in points[:-1]]
        spread = math.sqrt(sum(r * r for r in resid) / max(1, len(resid))) if resid else 0.0
        return v_last, slope, spread, t_last

    def latest(self, node_id: str, metric: str) -> float | None:
        fit = self._fit(node_id, metric)
        return None if fit is None else fit[0]

    def trend(self, node_id: str, metric: str) -> float | None:
        fit = self._fit(node_id, metric)
        return None if fit is None else fit[1]

    def forecast(self, node_id: str, metric: str, horizon_s: float) -> float | None:
        fit = self._fit(node_id, metric)
        return None if fit is None else fit[0] + fit[1] * horizon_s

    def time_to(self, node_id: str, metric: str, level: float) -> float | None:
        fit = self._fit(node_id, metric)
        if fit is None:
            return None
        value, slope = fit[0], fit[1]
        if (value >= level and slope >= 0) or (value <= level and slope <= 0 and value == level):
            return 0.0
        if slope == 0 or (level - value) / slope < 0:
            return None
        return (level - value) / slope

    def anomaly(self, node_id: str, metric: str) -> float | None:
        points = self.series.get((node_id, metric))
        if not points or len(points) < 3:
            return None
        fit = self._fit(node_id, metric)
        assert fit is not None
        values = [v for _, v in points[:-1]]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) or 1e-9
        z = abs(points[-1][1] - mean) / sd
        return 1.0 - math.exp(-z / 3.0)

    def evidence(self, node_id: str, metric: str) -> dict[str, Any]:
        fit = self._fit(node_id, metric)
        if fit is None:
            return {}
        value, slope, spread, _ = fit
        return {"metric": metric, "observed": value, "expected": [value - 3 * spread, value + 3 * spread],
                "horizon_s": 3600.0, "trend": slope}


class LeavePredictions:
    """Test plugin: puts a ``Predictions`` object in the tick's scratch space before rules run."""

    __wyneos_name__ = "test-predictions"

    def __init__(self, predictions: Predictions) -> None:
        self.predictions = predictions

    @hookimpl(tryfirst=True)
    def wyneos_governance(self, ctx: Any) -> list:
        ctx.scratch[SCRATCH_KEY] = self.predictions
        return []

