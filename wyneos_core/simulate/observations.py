"""The simulated witnesses' observations as columns, from the cluster to the tick.

An agent sends what it saw of its mesh neighbours with its heartbeat. A simulated
cluster of a million nodes would make four million ``model.Observation`` objects per
tick that way (and check each one), while the tick's consumers read them as columns:
the trust step reads one ``ObservationBatch``, consensus picks out the few
observations that can change anything (``HeartbeatObservations.relevant``). So the
simulated nodes hand theirs over as columns:

* ``ObservationColumns`` holds one tick's observation edges as arrays (observer and
  subject positions in the cluster's id list, ``reachable``, whether the probe was
  answered, whether the edge is a colluder's vouch) and is the ``HeartbeatObservations``
  the tick gets: its ``batch`` is the ``ObservationBatch`` the trust step reads, and an
  ``Observation`` object is made only for an edge that is read one by one (those
  ``relevant`` picks, or a plugin iterating);
* ``SimObservationLog`` takes the registry's ``ObservationLog`` place. Its ``take`` (the
  registry's, called by the tick right after the heartbeat step) keeps only the
  observations of nodes whose heartbeat the registry accepted this tick (its timestamp
  is the one the node last reported), as the registry does for observations that come
  with heartbeats; observations of any other heartbeat still come through the real log.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from wyneos_core.model import Observation
from wyneos_core.trust.observations import HeartbeatObservations, ObservationBatch, ObservationLog

__all__ = ["ObservationColumns", "SimObservationLog", "TickEdges"]


class TickEdges:
    """One tick's observation edges of the simulated nodes (before the registry's verdict).

    :param ids: the cluster's node ids (positions index it; the same list every tick).
    :param observer: observer position of each edge.
    :param subject: subject position of each edge.
    :param reachable: what the observer reports.
    :param up: whether the probe was answered (it has a round-trip time).
    :param vouch: a colluder's vouch for another colluder (no probe behind it).
    :param latency: per node probe latency (ms); an answered probe's rtt is the sum of both ends'.
    :param seq: per node heartbeat sequence number of this tick.
    :param sent: per node the timestamp of the heartbeat it sent this tick (NaN: none).
    """

    __slots__ = ("ids", "observer", "subject", "reachable", "up", "vouch", "latency", "seq", "sent")

    def __init__(self, ids: Sequence[str], observer: np.ndarray, subject: np.ndarray, reachable: np.ndarray,
                 up: np.ndarray, vouch: np.ndarray, latency: np.ndarray, seq: np.ndarray, sent: np.ndarray) -> None:
        self.ids = ids
        self.observer = observer
        self.subject = subject
        self.reachable = reachable
        self.up = up
        self.vouch = vouch
        self.latency = latency
        self.seq = seq
        self.sent = sent

    def __len__(self) -> int:
        return len(self.observer)

    def keep(self, mask: np.ndarray) -> TickEdges:
        """The edges where ``mask`` holds."""
        return TickEdges(self.ids, self.observer[mask], self.subject[mask], self.reachable[mask], self.up[mask],
                         self.vouch[mask], self.latency, self.seq, self.sent)

    def observation(self, k: int) -> Observation:
        """Edge ``k`` as the ``model.Observation`` its observer's heartbeat would carry."""
        ids, o, s = self.ids, int(self.observer[k]), int(self.subject[k])
        if self.vouch[k]:
            return Observation(ids[o], ids[s], True, None, None, True)
        rtt = round(float(self.latency[o]) + float(self.latency[s]), 3) if self.up[k] else None
        return Observation(ids[o], ids[s], bool(self.reachable[k]), rtt, int(self.seq[s]), True)

    def of_observer(self, position: int) -> tuple[Observation, ...]:
        """What the node at ``position`` reported, as its heartbeat would carry it."""
        return tuple(map(self.observation, np.flatnonzero(self.observer == position).tolist()))


class _Codes:
    """Node id -> position in the cluster's id list (``HeartbeatObservations.codes``),
    without a dictionary of the whole fleet."""

    __slots__ = ("position",)

    def __init__(self, position: Any) -> None:
        self.position = position

    def get(self, node_id: str, default: Any = None) -> Any:
        found = self.position(node_id)
        return default if found is None else found


class ObservationColumns(HeartbeatObservations):
    """A tick's observations as columns; ``Observation`` objects made when read one by one.

    It is the list of ``model.Observation`` the tick's ``ctx.observations`` always was
    (length, indexing, iteration), whose items are made on demand from ``edges``.
    Appending to it first makes every item (and it then reads like a plain list).
    """

    def __init__(self, edges: TickEdges, codes: _Codes) -> None:
        super().__init__()
        self.edges: TickEdges | None = edges
        self.batch = ObservationBatch(edges.ids, edges.observer, edges.subject, edges.reachable)
        self.codes = codes  # type: ignore[assignment]

    def _spill(self) -> None:
        edges = self.edges
        if edges is not None:
            self.edges = None
            super().extend(map(edges.observation, range(len(edges))))

    def __len__(self) -> int:
        edges = self.edges
        return len(edges) if edges is not None else super().__len__()

    def __bool__(self) -> bool:
        return len(self) > 0

    def __getitem__(self, k: Any) -> Any:
        edges = self.edges
        if edges is None or isinstance(k, slice):
            self._spill()
            return super().__getitem__(k)
        n = len(edges)
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(k)
        return edges.observation(k)

    def __iter__(self) -> Iterator[Observation]:
        edges = self.edges
        if edges is None:
            return super().__iter__()
        return map(edges.observation, range(len(edges)))

    def append(self, item: Any) -> None:
        self._spill()
        super().append(item)

    def extend(self, items: Any) -> None:
        self._spill()
        super().extend(items)

    def __repr__(self) -> str:
        return f"ObservationColumns({len(self)} observations)"


class SimObservationLog:
    """The registry's observation log, with the simulated nodes' observations as columns.

    :param real: the registry's own ``ObservationLog`` (observations that come with
        heartbeats keep going there).
    :param registry: the registry (its node table says whose heartbeat was accepted).
    :param position: node id -> position in the cluster's id list (None: not a simulated node).
    """

    def __init__(self, real: ObservationLog, registry: Any, position: Any) -> None:
        self.real = real
        self.registry = registry
        self.codes = _Codes(position)
        self.pending: TickEdges | None = None
        self._slots: np.ndarray | None = None

    def put(self, edges: TickEdges) -> None:
        """This tick's observations of the simulated nodes (replacing any not taken)."""
        self.pending = edges

    def add(self, observer: str, observations: Sequence[Any]) -> None:
        self.real.add(observer, observations)

    def __len__(self) -> int:
        return len(self.real) + (len(self.pending) if self.pending is not None else 0)

    def _registry_slots(self, ids: Sequence[str]) -> np.ndarray:
        """Registry slot of each simulated node (-1: not registered), looked up once."""
        if self._slots is None or len(self._slots) != len(ids):
            index = self.registry.table.index
            self._slots = np.fromiter((index.get(i, -1) for i in ids), np.int64, len(ids))
        return self._slots

    def take(self) -> HeartbeatObservations:
        edges, self.pending = self.pending, None
        if edges is None:
            return self.real.take()
        slots = self._registry_slots(edges.ids)
        known = slots >= 0
        heard = np.zeros(len(slots), bool)
        heard[known] = self.registry.table.last_seen[slots[known]] == edges.sent[known]  # accepted, newest
        out = ObservationColumns(edges.keep(heard[edges.observer]), self.codes)
        if len(self.real):  # other heartbeats carried observations too: one plain list of both
            for item in out:
                self.real.add(item.observer, (item,))
            return self.real.take()
        return out
