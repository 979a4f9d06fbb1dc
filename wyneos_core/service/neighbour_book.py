"""The orchestrator's half of agents as witnesses: each node's mesh neighbours, sealed.

``NeighbourBook`` (a plugin) hands each agent its own list of mesh neighbours - id, the
peer address the node reported (``metadata.peer_address``), the fingerprint of its
enrolled key - sealed with the orchestrator key (format ``wyneos.neighbours/1``), in the
answer to its heartbeat. The agent's half (``service.peer.PeerNode``) verifies the list
and probes the neighbours on it (``docs/mesh.md``).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from wyneos_core import hookimpl
from wyneos_core.model import ORIGIN

__all__ = ["MAX_NEIGHBOURS", "NEIGHBOURS_FORMAT", "PEER_ADDRESS", "NeighbourBook"]

NEIGHBOURS_FORMAT = "wyneos.neighbours/1"
#: neighbours an agent probes at most (the rest of a longer list is ignored)
MAX_NEIGHBOURS = 16
#: a peer address as a neighbour list carries it (``host:port``)
PEER_ADDRESS = re.compile(r"^[A-Za-z0-9.\-]{1,253}:[0-9]{1,5}$")


class NeighbourBook:
    """Each node's mesh neighbours as of the last tick, listed and sealed when the node asks.

    The tick only notes which registry and mesh to read (nothing per node: a tick over a
    million nodes pays nothing here). A node's list is made when the answer to its
    heartbeat asks for it (``signed_for``: a few microseconds for its handful of
    neighbours) and sealed again only when it changed; sealed lists are kept for at most
    ``max_sealed`` nodes, the least recently asked forgotten first (one more signature
    when such a node asks again). A list is kept with what it was read from: the mesh's
    ``generation`` and, per mesh neighbour, its slot, metadata, fingerprint and isolation
    in the registry's table. After a tick, a list whose sources are all the same objects
    is the list again (``_unchanged``: a few comparisons, where listing it again walks
    the mesh and the registry); any difference, or a read that races the tick, lists it
    again.

    :param sign: ``OrchestratorKey.seal`` (or any ``(fmt, payload) -> envelope``).
    :param max_sealed: nodes whose sealed list is kept (the service: ``max_sessions``).
    """

    __wyneos_name__ = "neighbour-book"

    def __init__(self, sign: Callable[[str, Mapping[str, Any]], dict[str, Any]], max_sealed: int = 250_000) -> None:
        self._seal = sign
        self._source: tuple[Any, Any] | None = None  # (registry, mesh) of the last tick
        #: node -> (tick it was last made or found unchanged at, the list, its envelope, the
        #: source it was read from (``_epoch``), what it read there), least recently asked first
        self._sealed: OrderedDict[str, tuple[int, tuple[dict[str, Any], ...], dict[str, Any], int, Any]] = \
            OrderedDict()
        self._lock = threading.Lock()
        self.max_sealed = max_sealed
        self.tick = 0
        self._epoch = 0  # bumped when a tick names another registry, table or mesh
        self._seen: tuple[int, int, int] | None = None  # their ids, kept with ``_source``

    @hookimpl
    def wyneos_tick_report(self, ctx: Any) -> None:
        with self._lock:
            seen = (id(ctx.registry), id(ctx.registry.table), id(ctx.mesh))
            if seen != self._seen:  # (the source it replaces is still referenced here: its ids are not reused yet)
                self._epoch += 1
                self._seen = seen
            self._source = (ctx.registry, ctx.mesh)
            self.tick = ctx.tick

    def neighbours_of(self, node_id: str) -> tuple[dict[str, Any], ...] | None:
        """The neighbours ``node_id`` is to probe: mesh neighbours with an enrolled key, a
        peer address and not isolated, by id, at most ``MAX_NEIGHBOURS`` (None before the
        first tick, for a node not in the registry or the mesh, or when the tick thread
        kept changing them while they were read)."""
        listed = self._read(node_id)
        return None if listed is None else listed[0]

    def _read(self, node_id: str,
              source: tuple[Any, Any] | None = None) -> tuple[tuple[dict[str, Any], ...], Any] | None:
        """(``neighbours_of``, what it was read from), or None."""
        source = self._source if source is None else source
        if source is None:
            return None
        for _ in range(3):  # read beside a running tick: one that changes them meanwhile, read again
            try:
                return _listed(*source, node_id)
            except (LookupError, RuntimeError, ValueError):  # ValueError: MeshError (it left the mesh)
                continue
        return None

    def signed_for(self, node_id: str) -> dict[str, Any] | None:
        """The sealed neighbour list of ``node_id`` (None when ``neighbours_of`` is None).
        Made once per tick at most: a node that asks again before the next tick gets
        the same envelope; after a tick, the same envelope too when what its list was read
        from is unchanged."""
        with self._lock:
            cached = self._sealed.get(node_id)
            if cached is not None:
                self._sealed.move_to_end(node_id)
            tick, source, epoch = self.tick, self._source, self._epoch
        if cached is not None:
            if cached[0] == tick:
                return cached[2]
            if source is not None and cached[3] == epoch and _unchanged(*source, node_id, cached[4]):
                with self._lock:
                    if node_id in self._sealed:
                        self._sealed[node_id] = (tick, *cached[1:])
                return cached[2]
        listed = self._read(node_id, source)
        if listed is None:
            return None
        current, read_from = listed
        if cached is not None and cached[1] == current:
            envelope = cached[2]
        else:
            envelope = self._seal(NEIGHBOURS_FORMAT, {"node": node_id, "tick": tick, "issued_at": int(time.time()),
                                                      "neighbours": list(current)})
        with self._lock:
            self._sealed[node_id] = (tick, current, envelope, epoch, read_from)
            self._sealed.move_to_end(node_id)
            while len(self._sealed) > self.max_sealed:
                self._sealed.popitem(last=False)
        return envelope

    def __len__(self) -> int:
        """Nodes whose sealed list is kept."""
        return len(self._sealed)


def _listed(registry: Any, mesh: Any, node_id: str) -> tuple[tuple[dict[str, Any], ...], Any] | None:
    """``NeighbourBook.neighbours_of`` read from ``registry`` and ``mesh`` once, and what
    it was read from (for ``_unchanged``): the mesh's generation, the node's slot, and per
    mesh neighbour its slot (-1: not registered), metadata, fingerprint and isolation."""
    table = registry.table
    slot = table.index.get(node_id)
    if slot is None or node_id not in mesh:
        return None
    generation = mesh.generation
    ids, index, metadata, fingerprints, isolated = (table.ids, table.index, table.metadata, table.fingerprint,
                                                    table.isolated)
    out, read = [], []
    for v in mesh.neighbours(node_id):
        if v == ORIGIN:
            continue
        s = index.get(v)
        if s is None:
            read.append((v, -1, None, None, False))
            continue
        meta, fp, cut = metadata[s], fingerprints[s], bool(isolated[s])
        if ids[s] != v:
            raise LookupError(v)  # it left meanwhile: read again
        read.append((v, s, meta, fp, cut))
        if cut or fp is None:
            continue
        address = meta.get("peer_address")
        if not isinstance(address, str) or not PEER_ADDRESS.match(address):
            continue
        out.append({"id": v, "address": address, "fingerprint": fp})
    out.sort(key=lambda e: e["id"])
    return tuple(out[:MAX_NEIGHBOURS]), (generation, slot, tuple(read))


def _unchanged(registry: Any, mesh: Any, node_id: str, read_from: Any) -> bool:
    """Whether ``_listed`` would read the same as when it gave ``read_from``: the same mesh
    generation, and every neighbour's slot, metadata and fingerprint the same objects and
    its isolation the same (a metadata mapping or fingerprint replaced by an equal one
    counts as a change: listed again, to the same list)."""
    generation, slot, read = read_from
    if mesh.generation != generation:
        return False
    table = registry.table
    ids, index, metadata, fingerprints, isolated = (table.ids, table.index, table.metadata, table.fingerprint,
                                                    table.isolated)
    try:
        if ids[slot] != node_id:
            return False
        for v, s, meta, fp, cut in read:
            if s < 0:
                if index.get(v) is not None:
                    return False
            elif ids[s] != v or metadata[s] is not meta or fingerprints[s] is not fp or bool(isolated[s]) is not cut:
                return False
    except (LookupError, RuntimeError, ValueError):  # the tick changed the table meanwhile
        return False
    return True
