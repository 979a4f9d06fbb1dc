"""The metrics of the heartbeats accepted since the predict step last took them.

``Registry.accept`` adds each accepted heartbeat's metrics here, already in the order of
``telemetry.metrics`` (a C-level ``dict.get`` per name into a flat ``array('d')``), so
that the predict step turns a whole tick of heartbeats into a numpy matrix without a
Python step per value (measured at 100,000 nodes x 8 metrics: 80 ms reading the
dictionaries in the step, against the array taken as it is). Bounded: when nobody takes
them (the predict plugin is disabled) the oldest are dropped.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping
from itertools import repeat

import numpy as np

__all__ = ["MetricInbox", "MetricBatch", "NodeRows"]


class NodeRows:
    """A row number per node id, given the first time a node's metrics are accepted and
    kept (the detector columns of the predict step are laid out by it): the tick never
    looks node ids up one by one. A node that leaves (``release``) frees its row for the
    next new node; ``freed`` lists the rows freed since the detector last cleared them
    (``take_freed``), so that a node taking a row starts from empty columns."""

    __slots__ = ("index", "ids", "free", "freed")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        #: row -> node id (None: a free row)
        self.ids: list[str | None] = []
        self.free: list[int] = []
        self.freed: list[int] = []

    def row(self, node_id: str) -> int:
        found = self.index.get(node_id)
        if found is None:
            if self.free:
                found = self.free.pop()
                self.ids[found] = node_id
            else:
                found = len(self.ids)
                self.ids.append(node_id)
            self.index[node_id] = found
        return found

    def release(self, node_id: str) -> int | None:
        """Free ``node_id``'s row (a node deregistered); returns it (None: it had none)."""
        found = self.index.pop(node_id, None)
        if found is not None:
            self.ids[found] = None
            self.free.append(found)
            self.freed.append(found)
        return found

    def take_freed(self) -> list[int]:
        """The rows freed since the last call (their columns are to be cleared)."""
        freed, self.freed = self.freed, []
        return freed

    def __len__(self) -> int:
        """Rows in use or free (the height of the columns laid out by them)."""
        return len(self.ids)


class MetricBatch:
    """One tick of metrics: ``node_ids[i]`` (row ``rows[i]`` of ``NodeRows``) reported
    ``values[i, j]`` (NaN: not sent) of metric ``names[j]`` at ``stamps[i]`` (its
    heartbeat's timestamp)."""

    __slots__ = ("names", "node_ids", "rows", "stamps", "values")

    def __init__(self, names: tuple[str, ...], node_ids: list[str], rows: np.ndarray, stamps: np.ndarray,
                 values: np.ndarray) -> None:
        self.names = names
        self.node_ids = node_ids
        self.rows = rows
        self.stamps = stamps
        self.values = values

    def __len__(self) -> int:
        return len(self.node_ids)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """node id -> {metric: value} of the latest heartbeat of each node (for tests and tools)."""
        out: dict[str, dict[str, float]] = {}
        for node_id, row in zip(self.node_ids, self.values.tolist()):
            out[node_id] = {n: v for n, v in zip(self.names, row) if not math.isnan(v)}
        return out


class MetricInbox:
    """Accepted metrics in arrival order, flat; ``take`` empties it."""

    __slots__ = ("names", "limit", "rows", "_ids", "_rows", "_stamps", "_values")

    def __init__(self, names: Iterable[str] = (), limit: int = 1_000_000) -> None:
        self.names = tuple(names)
        self.limit = limit
        self.rows = NodeRows()
        self._reset()

    def _reset(self) -> None:
        self._ids: list[str] = []
        self._rows = array("q")
        self._stamps = array("d")
        self._values = array("d")

    def add(self, node_id: str, stamp: float, metrics: Mapping[str, float]) -> None:
        if len(self._ids) >= self.limit:  # nobody takes them: the old ones are of no use
            self._reset()
        self._ids.append(node_id)
        self._rows.append(self.rows.row(node_id))
        self._stamps.append(stamp)
        self._values.extend(map(metrics.get, self.names, repeat(math.nan)))

    def forget(self, node_id: str) -> None:
        """``node_id`` left: free its row and drop the metrics it sent since the last ``take``."""
        if self.rows.release(node_id) is not None and node_id in self._ids:
            kept = [i for i, other in enumerate(self._ids) if other != node_id]
            width = len(self.names)
            ids, rows, stamps, values = self._ids, self._rows, self._stamps, self._values
            self._reset()
            for i in kept:
                self._ids.append(ids[i])
                self._rows.append(rows[i])
                self._stamps.append(stamps[i])
                self._values.extend(values[i * width:(i + 1) * width])

    def __len__(self) -> int:
        return len(self._ids)

    def take(self) -> MetricBatch:
        width = len(self.names)
        values = np.frombuffer(self._values, dtype=np.float64).reshape(len(self._ids), width) if width else \
            np.zeros((len(self._ids), 0))
        batch = MetricBatch(self.names, self._ids, np.frombuffer(self._rows, dtype=np.int64),
                            np.frombuffer(self._stamps, dtype=np.float64), values)
        self._reset()
        return batch
