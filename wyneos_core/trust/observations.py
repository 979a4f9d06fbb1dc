"""Witness observations: what one node saw of another, the peer score's input.

Until the compliance mesh's typed witness model feeds the tick, the trust step reads a
plain sequence of observation edges from the tick context: ``ctx.scratch["observations"]``,
each an ``Observation`` (or any 3-tuple ``(observer, subject, reachable)``):

* ``observer``: id of the node that reports (or ``"orchestrator"`` for its own probes);
* ``subject``: id of the node observed;
* ``reachable``: True when the observer reached the subject (a positive observation),
  False when it reports the subject down (a negative one).

Whoever produces observations (the service's heartbeat path, the simulator, a plugin's
``wyneos_heartbeat``) appends them there during the tick, before the trust step. One
function, ``observations_of``, reads them, so adapting to a richer model is a change
in one place. Observations naming unknown nodes, and a node's observations of itself
(the suspect's own reports are excluded), are dropped by the trust step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

__all__ = ["Observation", "SCRATCH_KEY", "observations_of"]

#: where in ``TickContext.scratch`` the tick's observations are collected
SCRATCH_KEY: Final = "observations"


class Observation(NamedTuple):
    """One witness observation edge."""

    observer: str
    subject: str
    reachable: bool


def observations_of(ctx: Any) -> Sequence[tuple[str, str, bool]]:
    """The tick's observation edges (possibly empty)."""
    found: Iterable[Any] | None = ctx.scratch.get(SCRATCH_KEY)
    if not found:
        return ()
    return found if isinstance(found, (list, tuple)) else list(found)
