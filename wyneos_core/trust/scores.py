"""``TrustScores``: what the builtin trust plugin returns from ``wyneos_trust``.

A read-only mapping node id -> ``(score, tier)``, like any plugin's result, that also
keeps the scores in the order of the tick's node list: when it is the only result of
the step, the core writes them onto the nodes in one pass without looking anything up
by id (at 100,000 nodes that saves most of the cost of applying the step).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TrustScores"]


class TrustScores(Mapping[str, tuple[float, str]]):
    """Scores and tiers aligned with ``nodes`` (the tick's node list)."""

    __slots__ = ("nodes", "scores", "tiers", "_by_id")

    def __init__(self, nodes: Sequence[Any], scores: Sequence[float], tiers: Sequence[str]) -> None:
        if not len(nodes) == len(scores) == len(tiers):
            raise ValueError("nodes, scores and tiers must have the same length")
        self.nodes = nodes
        self.scores = scores
        self.tiers = tiers
        self._by_id: dict[str, tuple[float, str]] | None = None

    def _map(self) -> dict[str, tuple[float, str]]:
        if self._by_id is None:
            self._by_id = {n.id: (s, t) for n, s, t in zip(self.nodes, _floats(self.scores), self.tiers)}
        return self._by_id

    def __getitem__(self, node_id: str) -> tuple[float, str]:
        return self._map()[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map())

    def __len__(self) -> int:
        return len(self.nodes)

    def apply(self, nodes: Sequence[Any]) -> bool:
        """Write scores and tiers onto ``nodes`` if they are the nodes scored (same list
        object); False (nothing written) otherwise."""
        if nodes is not self.nodes:
            return False
        table = getattr(nodes, "table", None)
        if table is not None:  # the columns, in one pass
            slots = nodes.slots  # type: ignore[attr-defined]
            table.trust[slots] = np.asarray(self.scores, dtype=np.float64)
            codes = {name: table.tier_code(name) for name in set(self.tiers)}
            table.tier[slots] = np.fromiter(map(codes.__getitem__, self.tiers), np.int8, len(slots))
            return True
        for node, score, tier in zip(nodes, _floats(self.scores), self.tiers):
            node.trust = score
            node.trust_tier = tier
        return True


def _floats(scores: Any) -> Sequence[float]:
    """Scores as Python floats (an array's ``tolist``)."""
    return scores.tolist() if hasattr(scores, "tolist") else scores
