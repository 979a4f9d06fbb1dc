"""Beta reputation with forgetting (Jøsang and Ismail, 2002), one per behaviour signal.

For each node and signal the step keeps ``r`` (positive evidence) and ``s`` (negative
evidence). Every tick both are multiplied by the forgetting factor ``λ`` and this
tick's evidence is added, so evidence ``k`` ticks old weighs ``λ**k``; the score is the
expected value of the Beta(r + 1, s + 1) distribution,

    score = (r + 1) / (r + s + 2)

which is 0.5 with no evidence at all and tends to 1 (or 0) with steady good (or bad)
evidence. With ``λ = 0.9`` a node's evidence is worth at most ~10 ticks, so at most
``(10 + 1) / (10 + 2) = 0.917`` per signal: old good behaviour cannot bank credit for
ever, and a node that turns bad loses its score within a few ticks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BetaEvidence"]


class BetaEvidence:
    """``r`` and ``s`` arrays of shape (signals, slots), grown on demand.

    float32: evidence is at most ``1 / (1 - λ)`` per signal (10 with ``λ = 0.9``), where
    float32 holds seven significant digits, far finer than any tier threshold; it halves
    the engine's biggest columns (48 bytes per node for six signals).
    """

    __slots__ = ("r", "s")

    def __init__(self, signals: int, capacity: int) -> None:
        self.r = np.zeros((signals, capacity), dtype=np.float32)
        self.s = np.zeros((signals, capacity), dtype=np.float32)

    @property
    def capacity(self) -> int:
        return self.r.shape[1]

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        for name in ("r", "s"):
            old = getattr(self, name)
            new = np.zeros((old.shape[0], capacity), dtype=old.dtype)
            new[:, : old.shape[1]] = old
            setattr(self, name, new)

    def update(self, forgetting: float, positive: np.ndarray, negative: np.ndarray) -> None:
        """``r = λ r + positive``, ``s = λ s + negative`` (arrays shaped like ``r``)."""
        lam = np.float32(forgetting)
        self.r *= lam
        self.r += positive
        self.s *= lam
        self.s += negative

    def scores(self) -> np.ndarray:
        """``(r + 1) / (r + s + 2)`` per signal and slot (in float64, as the evidence's sums)."""
        r = self.r.astype(np.float64)
        out = r + self.s
        out += 2.0
        r += 1.0
        return np.divide(r, out, out=r)

    def score(self, signal: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """One signal's ``(r + 1) / (r + s + 2)`` over the first ``count`` slots, in float64
        (``out``: a float64 array of ``count`` to write into): one row at a time, so the
        step never holds every signal's scores at once."""
        r = self.r[signal, :count]
        den = np.add(r, self.s[signal, :count], dtype=np.float64)
        den += 2.0
        out = np.add(r, 1.0, dtype=np.float64, out=out)
        return np.divide(out, den, out=out)

    def reset(self, slot: int) -> None:
        self.r[:, slot] = 0.0
        self.s[:, slot] = 0.0
