"""Per node and metric: the detector columns of the whole fleet, and the answers to rules.

``Telemetry`` keeps one detector column (``detector.Columns``, 128 bytes) per node and
declared metric, node-major (column ``node * M + metric``), grown by doubling. Every
tick ``feed`` writes the metrics the heartbeats carried into one values matrix and steps
every column at once. ``FleetPredictions`` answers the ``Predictions`` protocol
(``wyneos_core.predict.interface``) from those columns, and ``to_bytes`` /
``from_bytes`` keep them across restarts (a checked binary layout, never pickle).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from wyneos_core.predict import detector, seasonal
from wyneos_core.predict.detector import F, FIELDS, HISTORY
from wyneos_core.telemetry_inbox import MetricBatch, NodeRows

MAGIC: Final = b"WYNTEL1\n"
#: the largest header a saved state may have (node ids and metric names), read before anything else
MAX_HEADER: Final = 64 * 1024 * 1024
#: an anomaly score at or above this is a finding (the detector's own episode level)
FINDING: Final = 0.5


class TelemetryStateError(ValueError):
    """Saved telemetry that cannot be read back (the message says why)."""


class Telemetry:
    """The detector columns of every node and declared metric."""

    def __init__(self, metrics: Sequence[Mapping[str, Any]], params: detector.Params | None = None,
                 rows: NodeRows | None = None) -> None:
        self.metrics = [m["name"] for m in metrics]
        self.units = {m["name"]: m.get("unit", "") for m in metrics}
        self.metric_index = {name: i for i, name in enumerate(self.metrics)}
        #: metrics with a daily profile (``seasonal: daily``)
        self.daily = [m.get("seasonal") == "daily" for m in metrics]
        #: node id -> row, shared with the registry's metric inbox (which numbers nodes at intake)
        self.rows = rows if rows is not None else NodeRows()
        self.cols = detector.Columns.empty(0, params, np.array(self.daily, dtype=bool))
        self._values = np.zeros(0)
        self._times = np.zeros(0)

    @property
    def width(self) -> int:
        return len(self.metrics)

    @property
    def node_ids(self) -> list[str]:
        return self.rows.ids

    def slot(self, node_id: str) -> int:
        """The node's row (added, empty, if new)."""
        row = self.rows.row(node_id)
        self._room()
        return row

    def _room(self) -> None:
        needed = len(self.rows) * self.width
        if needed > self.cols.size:
            self.cols.grow(max(needed, 2 * self.cols.size, 64 * max(1, self.width)))

    def feed(self, batch: MetricBatch) -> np.ndarray:
        """Step every column with one tick's samples (``Registry.take_metrics``); returns
        the scores, shape (nodes, metrics). A node that reported twice counts its last."""
        m = self.width
        self._room()
        self.clear_freed()
        size = self.cols.size
        if self._values.shape[0] != size:
            self._values, self._times = np.empty(size), np.empty(size)
        values, times = self._values, self._times
        values.fill(np.nan)
        times.fill(np.nan)
        if len(batch) and m:
            order = [self.metric_index[name] for name in batch.names]
            by_node = values.reshape(-1, m)
            rows = batch.rows
            if order == list(range(m)):
                by_node[rows] = batch.values
            else:
                by_node[rows[:, None], np.array(order)[None, :]] = batch.values
            times.reshape(-1, m)[rows] = batch.stamps[:, None]
        return self.step(values, times)

    def clear_freed(self) -> None:
        """Empty the columns of the nodes that left (``NodeRows.release``), so that a node
        given one of their rows starts from nothing."""
        freed = self.rows.take_freed()
        if freed and self.width:
            rows = np.array(freed, dtype=np.intp)
            index = (rows[:, None] * self.width + np.arange(self.width)[None, :]).ravel()
            self.cols.reset(index[index < self.cols.size])

    def step(self, values: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Step every column with flat ``values``/``times`` (NaN: no sample)."""
        present = ~np.isnan(values)
        scores = self.cols.step(values, present, np.where(present, times, 0.0))
        return scores[: len(self.node_ids) * self.width].reshape(len(self.node_ids), self.width)

    def index(self, node_id: str, metric: str) -> int | None:
        row = self.rows.index.get(node_id)
        col = self.metric_index.get(metric)
        if row is None or col is None:
            return None
        index = row * self.width + col
        return index if self.cols.fields[F["count"], index] > 0 else None

    # -- kept across restarts ----------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The columns of the nodes present (a left node's row is not saved)."""
        self.clear_freed()
        live = [(row, node_id) for row, node_id in enumerate(self.node_ids) if node_id is not None]
        rows = np.array([row for row, _ in live], dtype=np.intp)
        index = (rows[:, None] * self.width + np.arange(self.width)[None, :]).ravel()
        header = json.dumps({"metrics": self.metrics, "nodes": [node_id for _, node_id in live],
                             "fields": list(FIELDS), "history": HISTORY, "daily": self.daily}).encode()
        cols = self.cols
        # the history is saved as its bytes: a seasonal series keeps signed bytes in it
        return b"".join((MAGIC, struct.pack("<Q", len(header)), header,
                         np.ascontiguousarray(cols.fields[:, index], dtype="<f4").tobytes(),
                         np.ascontiguousarray(cols.last_t[index], dtype="<f8").tobytes(),
                         np.ascontiguousarray(cols.history[:, index]).view(np.uint32).astype("<u4").tobytes()))

    def restore(self, blob: bytes) -> int:
        """Put saved columns back (for the metrics still declared); returns the nodes restored.

        :raises TelemetryStateError: a blob of another layout, truncated or damaged.
        """
        if blob[: len(MAGIC)] != MAGIC or len(blob) < len(MAGIC) + 8:
            raise TelemetryStateError("not a saved telemetry state")
        (size,) = struct.unpack_from("<Q", blob, len(MAGIC))
        start = len(MAGIC) + 8
        if size > MAX_HEADER or start + size > len(blob):
            raise TelemetryStateError(f"header of {size} bytes does not fit")
        try:
            header = json.loads(blob[start:start + size])
            metrics, nodes = header["metrics"], header["nodes"]
            same_layout = header["fields"] == list(FIELDS) and header["history"] == HISTORY
            daily = header.get("daily")
        except (ValueError, KeyError, TypeError) as exc:
            raise TelemetryStateError(f"damaged header ({exc})") from None
        if not same_layout:
            raise TelemetryStateError("saved by another detector layout")
        if not (isinstance(metrics, list) and isinstance(nodes, list) and isinstance(daily, list)
                and all(isinstance(x, str) for x in metrics + nodes) and len(set(nodes)) == len(nodes)
                and len(daily) == len(metrics) and all(isinstance(x, bool) for x in daily)):
            raise TelemetryStateError("damaged header (metrics and nodes must be lists of distinct names)")
        used = len(nodes) * len(metrics)
        body = memoryview(blob)[start + size:]
        expected = used * (4 * len(FIELDS) + 8 + 4 * HISTORY)
        if len(body) != expected:
            raise TelemetryStateError(f"{len(body)} bytes of columns, expected {expected}")
        a = 4 * len(FIELDS) * used
        b = a + 8 * used
        fields = np.frombuffer(body[:a], dtype="<f4").reshape(len(FIELDS), used)
        last_t = np.frombuffer(body[a:b], dtype="<f8")
        hist = np.frombuffer(body[b:], dtype="<u4").astype(np.uint32).view(np.float32).reshape(HISTORY, used)
        for row, node_id in enumerate(nodes):
            mine = self.slot(node_id)
            for j, metric in enumerate(metrics):
                col = self.metric_index.get(metric)
                if col is None or daily[j] != self.daily[col]:
                    continue  # no longer declared, or its seasonality changed: it learns again
                src, dst = row * len(metrics) + j, mine * self.width + col
                self.cols.fields[:, dst] = fields[:, src]
                self.cols.last_t[dst] = last_t[src]
                self.cols.history[:, dst] = hist[:, src]
        return len(nodes)


class FleetPredictions:
    """``Predictions`` (``wyneos_core.predict.interface``) over a ``Telemetry`` at ``now``."""

    def __init__(self, telemetry: Telemetry, now: float) -> None:
        self.telemetry = telemetry
        self.now = now

    def _at(self, node_id: str, metric: str) -> int | None:
        return self.telemetry.index(node_id, metric)

    def _field(self, node_id: str, metric: str, name: str, min_count: int = 1) -> float | None:
        i = self._at(node_id, metric)
        if i is None or self.telemetry.cols.fields[F["count"], i] < min_count:
            return None
        return float(self.telemetry.cols.fields[F[name], i])

    def latest(self, node_id: str, metric: str) -> float | None:
        return self._field(node_id, metric, "latest")

    def anomaly(self, node_id: str, metric: str) -> float | None:
        return self._field(node_id, metric, "score")

    def trend(self, node_id: str, metric: str) -> float | None:
        return self._field(node_id, metric, "slope", 2)

    def forecast(self, node_id: str, metric: str, horizon_s: float) -> float | None:
        i = self._at(node_id, metric)
        if i is None:
            return None
        value = float(detector.forecast(self.telemetry.cols, np.array([i]), float(horizon_s), self.now)[0])
        return value if math.isfinite(value) else None

    def time_to(self, node_id: str, metric: str, level: float) -> float | None:
        i = self._at(node_id, metric)
        if i is None:
            return None
        value = float(detector.time_to(self.telemetry.cols, np.array([i]), float(level), self.now)[0])
        return value if math.isfinite(value) else None

    def evidence(self, node_id: str, metric: str, horizon_s: float = 0.0) -> dict[str, Any]:
        i = self._at(node_id, metric)
        if i is None:
            return {}
        cols = self.telemetry.cols
        f = cols.fields[:, i]
        low, high = detector.band(cols, np.array([i]), float(horizon_s), self.now)
        score = float(f[F["score"]])
        width = 3.0 * float(f[F["slope_error"]])
        expected = float(f[F["expected"]])
        out = {
            "metric": metric,
            "unit": self.telemetry.units.get(metric, ""),
            "observed": float(f[F["latest"]]),
            "expected": [expected - width, expected + width],
            "horizon_s": float(horizon_s),
            "forecast": _num(detector.forecast(cols, np.array([i]), float(horizon_s), self.now)[0]),
            "forecast_band": [_num(low[0]), _num(high[0])],
            "trend_per_s": float(f[F["slope"]]),
            "anomaly": score,
            "finding": "anomalous" if score >= FINDING else "usual",
            "change_points": int(f[F["changes"]]),
            "samples": int(f[F["count"]]),
            "recent": detector.history(cols, i),
        }
        if cols.seasonal[i]:  # the expected band and the forecast follow the daily profile
            out["seasonal"] = "daily"
            out["profile"] = [None if v is None else round(v, 6) for v in seasonal.profile(cols, i)]
            out["profile_now"] = float(seasonal.profile_at(cols, np.array([i]), np.array([self.now]))[0])
        return out


def _num(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
