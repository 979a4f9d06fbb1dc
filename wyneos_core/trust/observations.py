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

Whoever produces observations (the service's heartbeat path, the simulator, a plugin's
``wyneos_heartbeat``) appends them there during the tick, before the trust step. One
function, ``observations_of``, reads them, so adapting to a richer model is a change
in one place. Observations naming unknown nodes, and a node's observations of itself
(the suspect's own reports are excluded), are dropped by the trust step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import numpy as np

__all__ = ["MixedObservations", "Observation", "ObservationBatch", "SCRATCH_KEY", "observations_of"]

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


def observations_of(ctx: Any) -> Sequence[Any] | ObservationBatch | MixedObservations:
    """The tick's observation edges (possibly empty): the witness observations the
    heartbeats carried (``ctx.observations``, the compliance mesh's typed model, when the
    tick has them) and whatever plugins put in ``ctx.scratch["observations"]``: a
    sequence of triples, or one ``ObservationBatch``."""
    found: Any = ctx.scratch.get(SCRATCH_KEY)
    typed = getattr(ctx, "observations", None)
    if found is not None and not isinstance(found, (list, tuple, ObservationBatch)):
        found = list(found)
    if not typed:
        return () if found is None else found
    if not found:
        return typed
    if isinstance(found, ObservationBatch):
        ids = found.ids
        found = [(ids[a], ids[b], bool(r)) for a, b, r in zip(found.observer.tolist(), found.subject.tolist(),
                                                              np.asarray(found.reachable).tolist())
                 if 0 <= a < len(ids) and 0 <= b < len(ids)]
    return MixedObservations((typed, found))
