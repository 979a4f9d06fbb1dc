"""``TrustScores``: what the builtin trust plugin returns from ``wyneos_trust``.

A read-only mapping node id -> ``(score, tier)``, like any plugin's result, that also
keeps the scores in the order of the tick's node list: when it is the only result of
the step, the core writes them onto the nodes in one pass without looking anything up
by id (at 100,000 nodes that saves most of the cost of applying the step).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from wyneos_core.trust.tiers import TIER_NAMES

__all__ = ["TrustScores"]


class TrustScores(Mapping[str, tuple[float, str]]):
    """Scores and tiers aligned with ``nodes`` (the tick's node list).

    Tiers are given by name (``tiers``) or as ranks in ``TIER_NAMES`` order
    (``tier_codes``, an array: the builtin's, no name per node made unless read).
    """

    __slots__ = ("nodes", "scores", "_tiers", "tier_codes", "_by_id")

    def __init__(self, nodes: Sequence[Any], scores: Sequence[float], tiers: Sequence[str] | None = None,
                 tier_codes: np.ndarray | None = None) -> None:
        if tiers is None and tier_codes is None:
            raise ValueError("tiers or tier_codes must be given")
        count = len(tiers) if tiers is not None else len(tier_codes)  # type: ignore[arg-type]
        if not len(nodes) == len(scores) == count:
            raise ValueError("nodes, scores and tiers must have the same length")
        self.nodes = nodes
        self.scores = scores
        self._tiers = tiers
        self.tier_codes = tier_codes
        self._by_id: dict[str, tuple[float, str]] | None = None

    @property
    def tiers(self) -> Sequence[str]:
        if self._tiers is None:
            self._tiers = [TIER_NAMES[c] for c in self.tier_codes.tolist()]  # type: ignore[union-attr]
        return self._tiers

    def tier_counts(self) -> dict[str, int]:
        """Nodes per tier name (counted over the codes when there are codes)."""
        if self.tier_codes is not None:
            found = np.bincount(self.tier_codes.astype(np.int64), minlength=len(TIER_NAMES))
            return {name: int(found[i]) for i, name in enumerate(TIER_NAMES) if found[i]}
        return dict(Counter(self.tiers))

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
            if self.tier_codes is not None:
                lookup = np.array([table.tier_code(name) for name in TIER_NAMES], dtype=np.int8)
                table.tier[slots] = lookup[self.tier_codes]
                return True
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
