"""What the report and the state writes list: the nodes and licence results worth a line,
found over the columns, so their cost grows with what changed, not with the fleet.

The tick report's ``nodes`` are the node table's columns copied at the end of the tick
(``nodetable.FrozenNodes``, positions in slot order); its ``licences`` answer
``problems()`` and ``summary()`` over the licence columns when the licence step keeps
them. Every function here also takes plain lists (a plugin's own report), walked as
before.

* ``changed_ids``: nodes whose status changed this tick or that an action targets;
* ``pick``: the report's nodes of a few ids, found through the registry's id index and
  checked against the copy (no walk over the ids);
* ``listed``: the same as a ``Listed``, read a chunk at a time (rows for the state file);
* ``rows_changed``: which of some nodes' stored rows changed since the previous copy;
* ``worth_a_look``: nodes not online, isolated or changed (a mask over the columns);
* ``node_dicts``: ``Node.to_dict`` rows made from the columns, without a ``Node`` each;
* ``licence_problems`` and ``licence_summary``: the results that are not plainly valid,
  and the counts per reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress
from typing import Any

import numpy as np

from wyneos_core.model import Node, NodeStatus, TickReport, licence_problems
from wyneos_core.nodetable import ONLINE, STATUSES
from wyneos_core.transitions import status_ids

__all__ = ["CHUNK", "Listed", "changed_ids", "licence_problems", "licence_summary", "listed", "node_chunks", "node_dicts", "pick",
           "report_dict", "report_parts", "rows_changed", "transition_chunks", "worth_a_look"]

_STATUS_VALUES = [s.value for s in STATUSES]
#: nodes per chunk of listed rows: what the report step holds at once, whatever the fleet
CHUNK = 4096


def changed_ids(report: TickReport) -> set[str]:
    """Nodes whose status changed this tick, and the targets of its new actions."""
    changed = set(status_ids(report.transitions))
    changed.update(a.target for a in report.actions)
    return changed


def _columns(nodes: Any) -> Any:
    """The copied columns behind the report's nodes (None: a plain list)."""
    table = getattr(nodes, "table", None)
    return table if table is not None and hasattr(table, "status") else None


def positions(nodes: Any, registry: Any, wanted: Iterable[str]) -> np.ndarray | None:
    """Positions in the report's node copy of the ``wanted`` ids that are in it (None: the
    copy has no columns). Each id is looked up in the registry's index; its slot's rank
    among the registered slots is its position in the copy, which is checked to hold that
    id (a node that joined or left since the copy is looked for by a walk). One lookup
    per id and a few array operations: no numpy call per id."""
    t = _columns(nodes)
    if t is None:
        return None
    ids = t.ids
    wanted = [w for w in wanted if isinstance(w, str)]
    live = getattr(registry, "table", None)
    found = np.zeros(0, dtype=np.int64)
    missed: list[str] = wanted
    if live is not None and wanted:
        slots = live.slots()
        slot = live.slots_of(wanted)
        at = np.minimum(np.searchsorted(slots, slot), max(len(ids) - 1, 0))
        hit = (slot >= 0) & (at < len(ids))
        if len(ids):
            hit[hit] = [ids[i] == node_id for i, node_id in zip(at[hit].tolist(), compress(wanted, hit.tolist()))]
        found = at[hit]
        missed = list(compress(wanted, (~hit).tolist())) if not hit.all() else []
    if missed:
        rest = set(missed)
        found = np.concatenate([found, np.array([i for i, node_id in enumerate(ids) if node_id in rest],
                                                dtype=np.int64)])
    return np.unique(found)


def rows_changed(nodes: Sequence[Node], before: Any, registry: Any, wanted: set[str]) -> set[str]:
    """Those of ``wanted`` whose stored fields (status, isolation, metadata, licence
    reference, fingerprint, registration time: not the soft state of the last heartbeat)
    differ between ``before``, the previous tick's copy, and ``nodes``; all of ``wanted``
    when a copy has no columns or nodes joined or left in between."""
    t, b = _columns(nodes), _columns(getattr(before, "nodes", None))
    if not wanted or t is None or b is None or len(t.ids) != len(b.ids) \
            or getattr(t, "membership", None) is None or getattr(t, "membership", None) != getattr(b, "membership", -1):
        return set(wanted)
    at = positions(nodes, registry, wanted)  # the same slots in both copies: the same positions
    if at is None:
        return set(wanted)
    changed = (t.status[at] != b.status[at]) | (t.isolated[at] != b.isolated[at]) \
        | (t.registered_at[at] != b.registered_at[at])
    where = at.tolist()
    for name in ("ids", "metadata", "licence_ref", "fingerprint"):
        now, then = getattr(t, name), getattr(b, name)
        if now is not then:  # the copies share a list that did not change
            changed |= np.fromiter((now[i] != then[i] for i in where), bool, len(where))
    out = {t.ids[i] for i in at[changed].tolist()}
    found = {t.ids[i] for i in where}
    return out | {w for w in wanted if w not in found}  # not in the copy: written as before (a plain walk)


def pick(nodes: Sequence[Node], registry: Any, wanted: set[str]) -> list[Node]:
    """The report's nodes whose id is in ``wanted``, in the report's order."""
    if not wanted:
        return []
    at = positions(nodes, registry, wanted)
    if at is None:
        return [n for n in nodes if n.id in wanted]
    return [nodes[i] for i in at.tolist()]


class Listed(Sequence[Node]):
    """Some of the report's nodes (``at``: positions in its column copy; None: all), read
    a chunk at a time: ``Node`` values made one by one when iterated, or, for a store
    that writes rows, ``column_chunks``: the stored fields as lists, no ``Node`` at all."""

    __slots__ = ("nodes", "at")

    def __init__(self, nodes: Sequence[Node], at: np.ndarray | None = None) -> None:
        self.nodes = nodes
        self.at = np.arange(len(nodes)) if at is None else at

    def __len__(self) -> int:
        return len(self.at)

    def __getitem__(self, position: Any) -> Any:
        if isinstance(position, slice):
            return [self.nodes[i] for i in self.at[position].tolist()]
        return self.nodes[int(self.at[position])]

    def __iter__(self) -> Iterator[Node]:
        t = self.nodes.table  # type: ignore[attr-defined]
        for lo in range(0, len(self.at), CHUNK):
            yield from map(t.value, self.at[lo:lo + CHUNK].tolist())

    def column_chunks(self, size: int = CHUNK) -> Iterator[tuple[list[Any], ...]]:
        """Chunks of at most ``size`` nodes as columns: ids, status values, last seen and
        load (None for none), metadata, licence refs, fingerprints, registration times and
        isolation (the fields of a stored node row, in that order)."""
        t = self.nodes.table  # type: ignore[attr-defined]
        ids, metadata, licence_ref, fingerprint = t.ids, t.metadata, t.licence_ref, t.fingerprint
        for lo in range(0, len(self.at), size):
            at = self.at[lo:lo + size]
            where = at.tolist()
            yield ([ids[i] for i in where], [_STATUS_VALUES[c] for c in t.status[at].tolist()],
                   _optional(t.last_seen[at]), _optional(t.load[at]), [metadata[i] for i in where],
                   [licence_ref[i] for i in where], [fingerprint[i] for i in where], t.registered_at[at].tolist(),
                   t.isolated[at].tolist())


def listed(nodes: Sequence[Node], registry: Any, wanted: set[str] | None = None) -> Sequence[Node]:
    """The report's nodes whose id is in ``wanted`` (all when None), in the report's order:
    a ``Listed`` over the columns, or a list of the nodes of a plain list."""
    if wanted is None:
        return Listed(nodes) if _columns(nodes) is not None else list(nodes)
    at = positions(nodes, registry, wanted) if wanted else np.zeros(0, dtype=np.int64)
    if at is None:
        return [n for n in nodes if n.id in wanted]
    return Listed(nodes, at)


def worth_a_look(nodes: Sequence[Node], registry: Any, changed: set[str]) -> np.ndarray | list[Node]:
    """Positions of the nodes not online, isolated, or in ``changed`` (a list of nodes
    when the report's nodes are a plain list)."""
    t = _columns(nodes)
    if t is None:
        online = NodeStatus.ONLINE
        return [n for n in nodes if n.status is not online or n.isolated or n.id in changed]
    count = len(t.ids)
    mask = (t.status[:count] != ONLINE) | t.isolated[:count]
    at = positions(nodes, registry, changed)
    if at is not None and at.size:
        mask[at] = True
    return np.flatnonzero(mask)


def _optional(values: np.ndarray) -> list[Any]:
    """Floats with NaN as None (and infinities as None: JSON has neither)."""
    out = values.astype(object)
    out[~np.isfinite(values)] = None
    return out.tolist()


def node_dicts(nodes: Sequence[Node], at: np.ndarray | list[Node] | None = None) -> list[dict[str, Any]]:
    """``Node.to_dict()`` of the nodes at positions ``at`` (all when None), made from the
    columns: one dict per node listed and no ``Node``."""
    t = _columns(nodes)
    if t is None or isinstance(at, list):
        return [n.to_dict() for n in (nodes if at is None else at)]
    if at is None:
        at = np.arange(len(t.ids))
    where = at.tolist()
    ids, metadata, licence_ref, fingerprint = t.ids, t.metadata, t.licence_ref, t.fingerprint
    trust = t.trust[at]
    tiers = list(t.tier_names) + [None]  # code -1: no tier yet
    rounded = [None if v != v else round(v, 4) for v in trust.tolist()] if len(where) else []
    keys = ("id", "status", "last_seen", "load", "metadata", "licence_ref", "fingerprint", "isolated", "trust",
            "trust_tier")
    columns = (
        [ids[i] for i in where],
        [_STATUS_VALUES[c] for c in t.status[at].tolist()],
        _optional(t.last_seen[at]),
        _optional(t.load[at]),
        [metadata[i] for i in where],
        [licence_ref[i] for i in where],
        [fingerprint[i] for i in where],
        t.isolated[at].tolist(),
        rounded,
        [tiers[c] for c in t.tier[at].tolist()],
    )
    return [dict(zip(keys, row)) for row in zip(*columns)]


def licence_summary(report: TickReport) -> dict[str, int]:
    """Licence results per reason code, over the columns when the licences have them."""
    summary = getattr(report.licences, "summary", None)
    return summary() if summary is not None else report.licence_counts()


def report_parts(report: TickReport, registry: Any, max_nodes: int | None = None) -> tuple[dict[str, Any], Any]:
    """``report.to_dict(max_nodes)`` without its node list and its transitions (both
    empty, in their place), and which nodes the list holds: positions in the columns,
    nodes of a plain list, or None for all (``node_chunks`` makes their rows a chunk at a
    time; ``transition_chunks`` the transitions)."""
    nodes = report.nodes
    listed: Any = None
    omitted = 0
    if max_nodes is not None and len(nodes) > max_nodes:
        listed = worth_a_look(nodes, registry, changed_ids(report))
        omitted = len(nodes) - len(listed)
    data = dataclasses.replace(report, nodes=[], licences={}, counted={}, transitions=[]).to_dict()
    data["status_counts"] = report.status_counts()
    data["nodes"] = []
    data["nodes_omitted"] = omitted
    data["licences"] = [r.to_dict() for r in licence_problems(report.licences)]
    data["licence_summary"] = licence_summary(report)
    return data, listed


def node_chunks(nodes: Sequence[Node], at: np.ndarray | list[Node] | None = None,
                size: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    """``node_dicts(nodes, at)`` in consecutive chunks of at most ``size`` rows."""
    if at is None:
        at = np.arange(len(nodes)) if _columns(nodes) is not None else list(nodes)
    for lo in range(0, len(at), size):
        yield node_dicts(nodes, at[lo:lo + size])


def report_dict(report: TickReport, registry: Any, max_nodes: int | None = None) -> dict[str, Any]:
    """``report.to_dict(max_nodes)``, its node and licence lists found over the columns
    (the same document: same keys, same order, same values)."""
    data, listed = report_parts(report, registry, max_nodes)
    data["nodes"] = node_dicts(report.nodes, listed)
    data["transitions"] = list(report.transitions)
    return data


def transition_chunks(report: TickReport, size: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    """The report's transitions in consecutive chunks of at most ``size`` (made as read
    when they are a ``Transitions``: a first tick changes every node's status)."""
    transitions = report.transitions
    chunks = getattr(transitions, "chunks", None)
    if chunks is not None:
        yield from chunks(size)
        return
    for lo in range(0, len(transitions), size):
        yield transitions[lo:lo + size]
