"""EigenTrust (Kamvar, Schlosser and Garcia-Molina, 2003) as sparse power iteration.

Each observer ``i`` holds local trust ``s_ij`` in each subject ``j`` (here: positive
minus negative observations, times the weight of the evidence); negative totals count
as 0. Rows are normalised, ``c_ij = max(s_ij, 0) / sum_j max(s_ij, 0)``; an observer
that trusts nobody (a dangling row) trusts the pre-trusted set ``p``. Global trust is
the fixed point of

    t = (1 - a) * C^T t + a * p

reached by power iteration from ``p`` (or from last tick's vector, which converges in
fewer steps). This is personalised PageRank with damping ``1 - a``, personalisation and
dangling distribution ``p``: ``networkx.pagerank(G, alpha=1 - a, personalization=p,
dangling=p)`` gives the same numbers (the tests check it on random graphs).

The matrix is a ``scipy.sparse`` CSR array built once per tick from the edge arrays
(duplicate edges summed by scipy), so a tick costs O(edges) per iteration and memory
O(edges), never O(nodes^2): 100,000 nodes with 600,000 edges fit in a few megabytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["EigenTrustResult", "eigentrust", "local_trust"]


@dataclass(slots=True)
class EigenTrustResult:
    """Global trust per vertex (sums to 1), iterations run, last L1 change, converged."""

    trust: np.ndarray
    iterations: int
    residual: float
    converged: bool


def local_trust(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, n: int) -> tuple[sp.csr_array, np.ndarray]:
    """The row-normalised local trust matrix ``C`` and the dangling mask.

    Duplicate ``(src, dst)`` pairs are summed first, then negative totals dropped, then
    rows normalised; self-edges are dropped (nobody vouches for itself).
    """
    keep = src != dst
    if not keep.all():
        src, dst, weight = src[keep], dst[keep], weight[keep]
    m = sp.csr_array((weight.astype(np.float64, copy=False), (src, dst)), shape=(n, n))
    m.sum_duplicates()
    if m.nnz:
        np.maximum(m.data, 0.0, out=m.data)
        m.eliminate_zeros()
    rows = np.diff(m.indptr)
    sums = np.add.reduceat(m.data, m.indptr[:-1][rows > 0]) if m.nnz else np.zeros(0)
    rowsum = np.zeros(n)
    rowsum[rows > 0] = sums
    dangling = rowsum <= 0
    scale = np.divide(1.0, rowsum, out=np.zeros(n), where=~dangling)
    m.data *= np.repeat(scale, rows)
    return m, dangling


def eigentrust(c: sp.csr_array, dangling: np.ndarray, p: np.ndarray, teleport: float, *,
               tolerance: float = 1e-6, max_iterations: int = 100,
               start: np.ndarray | None = None) -> EigenTrustResult:
    """Global trust from the local trust matrix ``c`` (rows sum to 1 or are dangling).

    :param p: the pre-trusted distribution (non-negative, sums to 1).
    :param teleport: ``a``, the weight of ``p`` in every step (0 < a <= 1).
    :param start: a starting vector (last tick's trust); ``p`` when None.
    """
    ct = c.T  # CSC view of C^T, no copy; its product with a vector is one pass over the edges
    t = p.copy() if start is None else start / start.sum()
    keep = 1.0 - teleport
    base = teleport * p
    residual = float("inf")
    dangling_idx = np.flatnonzero(dangling)
    for iteration in range(1, max_iterations + 1):
        new = ct @ t
        new *= keep
        new += base
        lost = t[dangling_idx].sum()
        if lost:
            new += (keep * lost) * p
        residual = float(np.abs(new - t).sum())
        t = new
        if residual < tolerance:
            return EigenTrustResult(t, iteration, residual, True)
    return EigenTrustResult(t, max_iterations, residual, False)
