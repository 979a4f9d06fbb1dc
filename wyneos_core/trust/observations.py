"""Witness observations: what one node saw of another, the peer score's input.

The trust step reads the witness observations the tick's heartbeats carried (the
compliance mesh's typed model, ``ctx.observations``, when the tick has it: each with
``observer``, ``subject`` and ``reachable``) and a plain sequence of observation edges
from the tick context, ``ctx.scratch["observations"]``, each an ``Observation`` (or any
3-tuple ``(observer, subject, reachable)``):

* ``observer``: id of the node that reports (or ``"orchestrator"`` for its own probes);
* ``subject``: id of the node observed;
* ``reachable``: True when the observer reached the subject (a positive observation),
  False when it reports the subject down (a negative one).

For large clusters the same edges can come as one ``ObservationBatch``: the ids
involved once (``ids``), and three equal-length arrays, ``observer`` and ``subject``
(positions in ``ids``) and ``reachable``, like a dictionary-encoded column. The step
then maps ids to its own slots once per batch (and not at all when the same ``ids``
list comes back next tick) instead of twice per edge: at 600,000 edges that is the
difference between about a second and a few milliseconds.

The heartbeats' observations reach the tick in that form: the registry collects those
of every accepted heartbeat in an ``ObservationLog`` and ``Registry.take_observations``
encodes them once (each node id gets a code the first time it is seen, kept across
ticks) and hands the tick a ``HeartbeatObservations``: the
``model.Observation`` objects as a list (what ``ctx.observations`` always was) that
also carries them as one ``ObservationBatch`` (``.batch``). The trust step reads the
batch; consensus uses it to pick the few observations that can change anything.

A plugin adds observations in one of two ways: as heartbeats (``wyneos_heartbeat``
returning ``Heartbeat(..., observations=...)``, checked like any other), or, during
the tick and before the trust step, by appending triples (or putting one
``ObservationBatch``) in ``ctx.scratch["observations"]``. Appending to
``ctx.observations`` itself also works (the list then no longer matches its batch, so
it is read object by object, slower). One
function, ``observations_of``, reads them, so adapting to a richer model is a change
in one place. Observations naming unknown nodes, and a node's observations of itself
(the suspect's own reports are excluded), are dropped by the trust step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import operator

import numpy as np

__all__ = ["HeartbeatObservations", "MixedObservations", "Observation", "ObservationBatch", "ObservationLog",
           "SCRATCH_KEY", "observations_of"]

_SUBJECT = operator.attrgetter("subject")
_REACHABLE = operator.attrgetter("reachable")

#: where in ``TickContext.scratch`` the tick's observations are collected
SCRATCH_KEY: Final = "observations"


class Observation(NamedTuple):
    """One witness observation edge."""

    observer: str
    subject: str
    reachable: bool


@dataclass(frozen=True, slots=True)
class ObservationBatch:
    """Observation edges, dictionary-encoded: ``ids[observer[k]]`` saw ``ids[subject[k]]``
    (``reachable[k]``). Positions outside ``ids`` are dropped by the step."""

    ids: Sequence[str]
    observer: np.ndarray
    subject: np.ndarray
    reachable: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.observer) == len(self.subject) == len(self.reachable)):
            raise ValueError("observer, subject and reachable must have the same length")

    def __len__(self) -> int:
        return len(self.observer)


@dataclass(frozen=True, slots=True)
class MixedObservations:
    """Several sequences of observations read in one step (heartbeat-borne ones and a
    plugin's triples), without copying them into one list."""

    parts: tuple[Sequence[Any], ...]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)


class HeartbeatObservations(list):  # type: ignore[type-arg]
    """The observations of the heartbeats accepted since the last take: a list of
    ``model.Observation`` that also holds them dictionary-encoded (``batch``, set by
    ``ObservationLog.take``; item ``k`` of the list is edge ``k`` of the batch)."""

    batch: ObservationBatch | None = None
    #: node id -> code in ``batch.ids``
    codes: dict[str, int] | None = None

    def current_batch(self) -> ObservationBatch | None:
        """The batch, when it still describes the list (None once items were added or
        removed after the take)."""
        batch = self.batch
        return batch if batch is not None and len(batch) == len(self) else None

    def relevant(self, subjects: Iterable[str]) -> list[Any]:
        """The observations that are not "reachable" reports about a node outside
        ``subjects``, in order (consensus: a reachable node nobody suspects tells nothing)."""
        batch = self.current_batch()
        if batch is None or self.codes is None:
            return list(self)
        mask = ~np.asarray(batch.reachable, dtype=bool)
        codes = self.codes
        wanted = [c for c in map(codes.get, subjects) if c is not None]
        if wanted:
            mask |= np.isin(batch.subject, np.array(wanted, dtype=np.int64))
        return list(map(self.__getitem__, np.flatnonzero(mask).tolist()))


class ObservationLog:
    """Witness observations of accepted heartbeats, dictionary-encoded once per take.

    Per heartbeat only the (checked) observation objects are appended, with the
    observer and how many it sent: that is all the intake pays. ``take`` encodes them
    in one pass of C-level maps (no Python step per edge): every node id seen gets a
    code once, its position in ``ids``; the subjects' codes, the observers' (repeated
    per heartbeat) and the reachable flags become numpy arrays. The vocabulary outlives
    the take, so the trust step maps ids to its slots once, not every tick; it starts
    over when it grows past ``max_ids`` (ids of nodes long gone, or made up by hostile
    observers, do not pile up).
    """

    def __init__(self, max_ids: int = 1_000_000) -> None:
        self.max_ids = max_ids
        self._fresh_vocabulary()
        self._clear()

    def _fresh_vocabulary(self) -> None:
        self.ids: list[str] = []
        self.codes: dict[str, int] = {}

    def _clear(self) -> None:
        self.items = HeartbeatObservations()
        self._observers: list[str] = []
        self._counts: list[int] = []

    def __len__(self) -> int:
        return len(self.items)

    def _encode(self, node_ids: list[str]) -> np.ndarray:
        """Codes of ``node_ids`` (new ids get the next codes, in order of appearance)."""
        codes = self.codes
        found = list(map(codes.get, node_ids))
        if None in found:
            ids = self.ids
            for k, (node_id, code) in enumerate(zip(node_ids, found)):
                if code is None:
                    code = codes.get(node_id)
                    if code is None:
                        code = codes[node_id] = len(ids)
                        ids.append(node_id)
                    found[k] = code
        return np.array(found, dtype=np.int64)

    def add(self, observer: str, observations: Sequence[Any]) -> None:
        """Append the (checked) observations one heartbeat of ``observer`` carried."""
        if observations:
            self.items.extend(observations)
            self._observers.append(observer)
            self._counts.append(len(observations))

    def take(self) -> HeartbeatObservations:
        """The observations collected since the last take, as a list with its batch
        (and forget them)."""
        out = self.items
        n = len(out)
        observers = np.repeat(self._encode(self._observers), np.array(self._counts, dtype=np.int64))
        subjects = self._encode(list(map(_SUBJECT, out)))
        reachable = np.fromiter(map(_REACHABLE, out), dtype=bool, count=n)
        out.batch = ObservationBatch(self.ids, observers.reshape(n), subjects.reshape(n), reachable)
        out.codes = self.codes
        self._clear()
        if len(self.ids) > self.max_ids:
            self._fresh_vocabulary()
        return out


def observations_of(ctx: Any) -> Sequence[Any] | ObservationBatch | MixedObservations:
    """The tick's observation edges (possibly empty): the witness observations the
    heartbeats carried (``ctx.observations``, the compliance mesh's typed model, when the
    tick has them) and whatever plugins put in ``ctx.scratch["observations"]``: a
    sequence of triples, or one ``ObservationBatch``."""
    found: Any = ctx.scratch.get(SCRATCH_KEY)
    typed = getattr(ctx, "observations", None)
    if isinstance(typed, HeartbeatObservations):
        typed = typed.current_batch() or typed
    if found is not None and not isinstance(found, (list, tuple, ObservationBatch)):
        found = list(found)
    if not typed:
        return () if found is None else found
    if not found:
        return typed
    if isinstance(typed, ObservationBatch):
        return MixedObservations((typed, found))
    if isinstance(found, ObservationBatch):
        ids = found.ids
        found = [(ids[a], ids[b], bool(r)) for a, b, r in zip(found.observer.tolist(), found.subject.tolist(),
                                                              np.asarray(found.reachable).tolist())
                 if 0 <= a < len(ids) and 0 <= b < len(ids)]
    return MixedObservations((typed, found))
