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
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any, Final

import numpy as np

from wyneos_core.predict import detector
from wyneos_core.predict.detector import F, FIELDS, HISTORY
from wyneos_core.telemetry_inbox import MetricBatch

MAGIC: Final = b"WYNTEL1\n"
#: the largest header a saved state may have (node ids and metric names), read before anything else
MAX_HEADER: Final = 64 * 1024 * 1024
#: an anomaly score at or above this is a finding (the detector's own episode level)
FINDING: Final = 0.5


class TelemetryStateError(ValueError):
    """Saved telemetry that cannot be read back (the message says why)."""


class Telemetry:
    """The detector columns of every node and declared metric."""

    def __init__(self, metrics: Sequence[Mapping[str, Any]], params: detector.Params | None = None) -> None:
        self.metrics = [m["name"] for m in metrics]
        self.units = {m["name"]: m.get("unit", "") for m in metrics}
        self.metric_index = {name: i for i, name in enumerate(self.metrics)}
        self.node_ids: list[str] = []
        self.node_index: dict[str, int] = {}
        self.cols = detector.Columns.empty(0, params)

    @property
    def width(self) -> int:
        return len(self.metrics)

    def slot(self, node_id: str) -> int:
        """The node's row, added (empty) if new."""
        index = self.node_index.get(node_id)
        if index is None:
            index = self.node_index[node_id] = len(self.node_ids)
            self.node_ids.append(node_id)
            needed = len(self.node_ids) * self.width
            if needed > self.cols.size:
                self.cols.grow(max(needed, 2 * self.cols.size, 64 * max(1, self.width)))
        return index

    def forget(self, keep: Iterable[str]) -> int:
        """Drop the nodes not in ``keep`` (removed from the cluster); returns how many went."""
        keep = set(keep)
        gone = [n for n in self.node_ids if n not in keep]
        if not gone:
            return 0
        rows = np.array([self.node_index[n] for n in self.node_ids if n in keep], dtype=np.intp)
        m = self.width
        index = (rows[:, None] * m + np.arange(m)[None, :]).ravel()
        cols = self.cols
        cols.fields, cols.last_t, cols.history = cols.fields[:, index], cols.last_t[index], cols.history[:, index]
        self.node_ids = [n for n in self.node_ids if n in keep]
        self.node_index = {n: i for i, n in enumerate(self.node_ids)}
        return len(gone)

    def feed(self, batch: MetricBatch) -> np.ndarray:
        """Step every column with one tick's samples (``Registry.take_metrics``); returns
        the scores, shape (nodes, metrics). A node that reported twice counts its last."""
        m = self.width
        rows = np.fromiter(map(self.node_index.get, batch.node_ids, repeat(-1)), dtype=np.intp, count=len(batch))
        for at in np.flatnonzero(rows < 0).tolist():  # nodes heard for the first time
            rows[at] = self.slot(batch.node_ids[at])
        size = self.cols.size
        values = np.full(size, np.nan)
        times = np.full(size, np.nan)
        if len(batch) and m:
            order = [self.metric_index[name] for name in batch.names]
            flat = rows[:, None] * m + np.array(order, dtype=np.intp)[None, :]
            values[flat] = batch.values
            times[flat] = batch.stamps[:, None]
        return self.step(values, times)

    def step(self, values: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Step every column with flat ``values``/``times`` (NaN: no sample)."""
        present = ~np.isnan(values)
        scores = self.cols.step(values, present, np.where(present, times, 0.0))
        return scores[: len(self.node_ids) * self.width].reshape(len(self.node_ids), self.width)

    def index(self, node_id: str, metric: str) -> int | None:
        row = self.node_index.get(node_id)
        col = self.metric_index.get(metric)
        if row is None or col is None:
            return None
        index = row * self.width + col
        return index if self.cols.fields[F["count"], index] > 0 else None

    # -- kept across restarts ----------------------------------------------------------

    def to_bytes(self) -> bytes:
        used = len(self.node_ids) * self.width
        header = json.dumps({"metrics": self.metrics, "nodes": self.node_ids, "fields": list(FIELDS),
                             "history": HISTORY}).encode()
        cols = self.cols
        return b"".join((MAGIC, struct.pack("<Q", len(header)), header,
                         np.ascontiguousarray(cols.fields[:, :used], dtype="<f4").tobytes(),
                         np.ascontiguousarray(cols.last_t[:used], dtype="<f8").tobytes(),
                         np.ascontiguousarray(cols.history[:, :used], dtype="<f4").tobytes()))

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
        except (ValueError, KeyError, TypeError) as exc:
            raise TelemetryStateError(f"damaged header ({exc})") from None
        if not same_layout:
            raise TelemetryStateError("saved by another detector layout")
        if not (isinstance(metrics, list) and isinstance(nodes, list)
                and all(isinstance(x, str) for x in metrics + nodes) and len(set(nodes)) == len(nodes)):
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
        hist = np.frombuffer(body[b:], dtype="<f4").reshape(HISTORY, used)
        for row, node_id in enumerate(nodes):
            mine = self.slot(node_id)
            for j, metric in enumerate(metrics):
                col = self.metric_index.get(metric)
                if col is None:
                    continue  # no longer declared
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
        return out


def _num(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
