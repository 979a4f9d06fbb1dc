"""Trust tiers, ordered from least to most trusted, and the one function that moves a
node between them (with hysteresis, so a node does not flap).

A tier is entered when the combined score reaches its ``enter`` threshold and left when
the score falls below its ``leave`` threshold (``leave < enter``): a node whose score
hovers around one threshold stays where it is. ``attested`` is reached only by nodes
the operator marks attested; an invalid licence caps a node at ``untrusted``; a node
still in admission (held in probation) is capped at ``probation``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

import numpy as np

__all__ = ["Tier", "TIER_NAMES", "tier_rank", "next_tiers"]


class Tier(IntEnum):
    """The four tiers; their integer value is their rank (compare tiers with ``<``)."""

    UNTRUSTED = 0
    PROBATION = 1
    TRUSTED = 2
    ATTESTED = 3

    @property
    def label(self) -> str:
        return self.name.lower()


#: tier names in rank order
TIER_NAMES: Final = tuple(t.label for t in Tier)
_RANK: Final = {name: rank for rank, name in enumerate(TIER_NAMES)}


def tier_rank(name: object) -> int | None:
    """The rank of a tier name (``"trusted"`` -> 2), None for anything else."""
    return _RANK.get(name) if type(name) is str else None


def next_tiers(current: np.ndarray, score: np.ndarray, enter: np.ndarray, leave: np.ndarray,
               cap: np.ndarray) -> np.ndarray:
    """Every node's next tier rank.

    :param current: each node's tier rank now.
    :param score: each node's combined score (0..1).
    :param enter: per tier rank, the score at which the tier is entered (``enter[0]`` is 0).
    :param leave: per tier rank, the score below which it is left (``leave[0]`` is 0).
    :param cap: each node's highest allowed rank (licence gate, admission, attestation).

    A node goes up to the highest tier whose ``enter`` its score reaches; it goes down,
    when its score falls below its tier's ``leave``, to the highest tier whose ``leave``
    its score still reaches; otherwise it stays. Then the cap applies.
    """
    # in one-byte ranks, one wide temporary at a time (at a million nodes each int64 or
    # float64 temporary is 8 MB): the result in the dtype of ``current`` and ``cap``
    current = np.asarray(current)
    out = np.where(score < leave[current], _rank(leave, score), current).astype(np.int8, copy=False)
    up = _rank(enter, score)
    np.copyto(out, up, where=up > current)
    del up
    np.minimum(out, cap, out=out, casting="unsafe")
    return out.astype(np.result_type(current.dtype, np.asarray(cap).dtype), copy=False)


def _rank(thresholds: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The highest rank ``k`` with ``thresholds[k] <= score``, per score (int8)."""
    found = np.searchsorted(thresholds, score, side="right")
    found -= 1
    return found.astype(np.int8)
