"""Generated mesh shapes as edge arrays (vertex numbers ``0..n-1``), for ``build_topology``.

Every generator returns two int32 arrays ``(a, b)``: edge ``i`` joins ``a[i]`` and
``b[i]``, each undirected edge once, no self-loop, no duplicate. Up to
``NETWORKX_UP_TO`` vertices ``small_world`` and ``random_regular`` are networkx's own
generators, edge for edge, so a seed keeps the mesh it always gave; above that they are
drawn with numpy (about a second at 1,000,000 vertices, where networkx takes minutes
and gigabytes):

* ``small_world``: the Watts-Strogatz ring lattice (each vertex joined to its ``k // 2``
  next vertices on each side), each lattice edge's far end moved with probability
  ``rewire`` to a vertex drawn at random (never a self-loop or a second copy of an
  edge); drawn again, as networkx's ``connected_watts_strogatz_graph`` does, until the
  graph is connected (at most 100 draws);
* ``random_regular``: ``d // 2`` random Hamiltonian cycles plus, for an odd ``d``, a
  random perfect matching; an edge drawn twice is repaired by swapping a vertex of the
  cycle (or matching) with one drawn at random, until every vertex has ``d`` distinct
  neighbours.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import networkx as nx
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["NETWORKX_UP_TO", "TopologyError", "full", "path", "random_regular", "ring", "small_world"]

#: up to this many vertices the random shapes are networkx's own (same seed, same mesh)
NETWORKX_UP_TO: Final = 10_000
_TRIES: Final = 100

Edges = tuple[np.ndarray, np.ndarray]


class TopologyError(ValueError):
    """A shape that cannot be drawn with the settings given."""


def _edges(pairs: Iterable[tuple[int, int]]) -> Edges:
    flat = np.fromiter((v for e in pairs for v in e), np.int32)
    return flat[0::2].copy(), flat[1::2].copy()


def path(n: int) -> Edges:
    a = np.arange(max(n - 1, 0), dtype=np.int32)
    return a, a + 1


def ring(n: int) -> Edges:
    """A cycle (a path for fewer than three vertices), its edges in the order networkx
    lists those of ``cycle_graph(n)`` (so neighbours, and ties in a search, come in the
    same order as they always did)."""
    if n <= 2:
        return path(n)
    a = np.concatenate([[0], np.arange(n - 1)]).astype(np.int32)
    b = np.concatenate([[1, n - 1], np.arange(2, n)]).astype(np.int32)
    return a, b


def full(n: int) -> Edges:
    a, b = np.triu_indices(n, 1)
    return a.astype(np.int32), b.astype(np.int32)


def _keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    return (lo << 32) | hi


def _repeated(keys: np.ndarray) -> np.ndarray:
    """Positions of the keys that already appeared earlier in ``keys``."""
    order = np.argsort(keys, kind="stable")
    s = keys[order]
    dup = np.zeros(len(keys), bool)
    dup[order[1:][s[1:] == s[:-1]]] = True
    return dup


def _among(keys: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Whether each key is in ``known`` (sorted)."""
    if not len(known):
        return np.zeros(len(keys), bool)
    at = np.minimum(np.searchsorted(known, keys), len(known) - 1)
    return known[at] == keys


def _connected(n: int, a: np.ndarray, b: np.ndarray) -> bool:
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[0] == 1


def small_world(n: int, k: int, rewire: float, seed: int) -> Edges:
    """A connected Watts-Strogatz graph (``k >= 2``, ``n > k``)."""
    if n <= NETWORKX_UP_TO:
        return _edges(nx.connected_watts_strogatz_graph(n, k, rewire, seed=seed).edges)
    rng = np.random.default_rng(seed)
    base = np.arange(n, dtype=np.int64)
    a = np.concatenate([base] * (k // 2)).astype(np.int32)
    b0 = np.concatenate([(base + j) % n for j in range(1, k // 2 + 1)]).astype(np.int32)
    for _ in range(_TRIES):
        b = b0.copy()
        moved = np.flatnonzero(rng.random(len(a)) < rewire)
        still = np.ones(len(a), bool)
        still[moved] = False
        # lattice edges first: of two copies of an edge, the later one (a moved one) draws again
        pos = np.concatenate([np.flatnonzero(still), moved])
        todo = moved
        while len(todo):
            b[todo] = rng.integers(0, n, len(todo), dtype=np.int32)
            bad = np.zeros(len(a), bool)
            bad[pos] = _repeated(_keys(a[pos], b[pos]))
            bad[todo] |= b[todo] == a[todo]
            todo = np.flatnonzero(bad)
        if _connected(n, a, b):
            return a, b
    raise TopologyError(f"no connected small world of {n} vertices with degree {k} and rewire {rewire} "
                        f"in {_TRIES} draws")


def random_regular(d: int, n: int, seed: int) -> Edges:
    """A random ``d``-regular graph (``d * n`` even, ``0 <= d < n``)."""
    if d <= 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    if n <= NETWORKX_UP_TO:
        return _edges(nx.random_regular_graph(d, n, seed=seed).edges)
    rng = np.random.default_rng(seed)
    known = np.zeros(0, np.int64)
    parts_a: list[np.ndarray] = []
    parts_b: list[np.ndarray] = []
    layers = [2] * (d // 2) + ([1] if d % 2 else [])
    for kind in layers:
        p = rng.permutation(n).astype(np.int32)
        for _ in range(10_000):
            if kind == 2:  # a Hamiltonian cycle: edge i joins p[i] and p[i + 1]
                a, b = p, np.roll(p, -1)
            else:  # a perfect matching: edge i joins p[2i] and p[2i + 1]
                a, b = p[0::2], p[1::2]
            keys = _keys(a, b)
            bad = _repeated(keys) | _among(keys, known)
            if not bad.any():
                break
            where = np.flatnonzero(bad)
            slot = (where + 1) % n if kind == 2 else 2 * where + 1
            other = rng.integers(0, n, len(slot))
            p[slot], p[other] = p[other], p[slot].copy()
        else:  # pragma: no cover - the swaps converge in a few rounds
            raise TopologyError(f"no {d}-regular graph of {n} vertices drawn")
        parts_a.append(a.copy())
        parts_b.append(b.copy())
        known = np.sort(np.concatenate([known, keys]))
    return np.concatenate(parts_a), np.concatenate(parts_b)
