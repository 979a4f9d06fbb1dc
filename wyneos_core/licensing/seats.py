"""Seat counting across the cluster, with deterministic losers.

When more nodes hold a valid licence than it has seats, the nodes that registered
first keep theirs; ties are broken by node id. The same cluster always gives the same
losers, whatever order the nodes are listed in, and a node that already holds a seat
never loses it to one that arrives later.
"""

from __future__ import annotations

from collections.abc import Iterable

from wyneos_core.model import Node

__all__ = ["allocate_seats"]


def allocate_seats(holders: Iterable[tuple[tuple[str, int], Node]]) -> dict[str, tuple[str, int, int, int]]:
    """``holders``: ``((licence_id, seats), node)`` pairs; return the losers.

    :return: ``{node_id: (licence_id, seats, users, rank)}`` for every node over its
        licence's seat limit (rank is 1-based).

    >>> a, b, c = Node("a", registered_at=1), Node("b", registered_at=1), Node("c", registered_at=0)
    >>> allocate_seats([(("L", 2), a), (("L", 2), b), (("L", 2), c)])
    {'b': ('L', 2, 3, 3)}
    """
    groups: dict[str, list[Node]] = {}
    limits: dict[str, int] = {}
    for (lid, seats), node in holders:
        group = groups.get(lid)
        if group is None:
            groups[lid] = group = []
            limits[lid] = seats
        group.append(node)
    losers: dict[str, tuple[str, int, int, int]] = {}
    for lid, group in groups.items():
        seats = limits[lid]
        if len(group) <= seats:
            continue
        group.sort(key=lambda n: (n.registered_at, n.id))
        for rank, node in enumerate(group[seats:], start=seats + 1):
            losers[node.id] = (lid, seats, len(group), rank)
    return losers
