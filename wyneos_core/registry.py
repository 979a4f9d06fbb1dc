"""The node registry: who is in the cluster, what they last reported, their status.

What a heartbeat may carry is checked in ``wyneos_core.heartbeat_checks`` (its
``HeartbeatError`` and ``RESERVED_METADATA`` are importable from here too); the
registry checks what depends on the node (who it is, its clock) and applies it.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from wyneos_core.heartbeat_checks import RESERVED_METADATA, HeartbeatError, check_content
from wyneos_core.intake import CheckedHeartbeat, HeartbeatColumns
from wyneos_core.model import ORIGIN, Heartbeat, Node, NodeStatus
from wyneos_core.telemetry_inbox import MetricBatch, MetricInbox
from wyneos_core.transitions import StatusChanges
from wyneos_core.nodetable import OFFLINE, ONLINE, STALE, STATUSES, UNKNOWN, NodeList, NodeTable, NodeView
from wyneos_core.trust.observations import HeartbeatObservations, ObservationLog

__all__ = ["HeartbeatError", "Registry", "RegistryError", "NODE_ID_PATTERN", "RESERVED_METADATA",
           "RESERVED_NODE_IDS"]

NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

#: node ids no node can take: the orchestrator's own place in the mesh
RESERVED_NODE_IDS = frozenset({ORIGIN})


class RegistryError(ValueError):
    """Registering or removing a node failed."""


class Registry:
    """Nodes by id, heartbeat intake with checks, and status derivation.

    The nodes live in a ``NodeTable`` (``table``): typed columns by slot. ``get``,
    ``registry[id]`` and iteration give ``NodeView`` objects made when asked for;
    ``nodes()`` gives the ``NodeList`` of the registered nodes (views on demand, and the
    slots for code that reads the columns).

    :param settings: the ``heartbeat`` section of the config (``stale_after``,
        ``offline_after``, ``max_clock_skew``, ``unknown_nodes``,
        ``max_metadata_bytes``, ``max_load``).
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.table = NodeTable()
        #: nodes registered by their own heartbeat (``unknown_nodes: register``), not yet in the mesh
        self.joined: list[str] = []
        self.stale_after = float(settings["stale_after"])
        self.offline_after = float(settings["offline_after"])
        self.max_clock_skew = float(settings["max_clock_skew"])
        self.unknown_nodes = settings["unknown_nodes"]
        self.max_metadata_bytes = int(settings["max_metadata_bytes"])
        self.max_load = float(settings["max_load"])
        self.max_nodes = int(settings.get("max_nodes", 200_000))
        self.max_observations = int(settings.get("max_observations", 32))
        #: witness observations of the heartbeats accepted since ``take_observations`` was
        #: last called, dictionary-encoded as they come in (``trust.observations``)
        self.observations = ObservationLog(max_ids=2 * self.max_nodes + 4096)
        #: declared telemetry: metric name -> (min, max) (``telemetry.metrics``; ``declare_metrics``)
        self.metric_bounds: dict[str, tuple[float, float]] = {}
        #: the metrics of the heartbeats accepted since ``take_metrics`` (bounded)
        self.metrics_inbox = MetricInbox((), limit=2 * self.max_nodes)

    def declare_metrics(self, declared: Iterable[Mapping[str, Any]]) -> None:
        """The metrics a heartbeat may carry (the config's ``telemetry.metrics``)."""
        self.metric_bounds = {m["name"]: (float(m["min"]), float(m["max"])) for m in declared}
        self.metrics_inbox = MetricInbox(self.metric_bounds, limit=2 * self.max_nodes)

    def take_metrics(self) -> MetricBatch:
        """The metrics accepted since the last call, in arrival order (and forget them)."""
        return self.metrics_inbox.take()

    # -- membership -------------------------------------------------------------------

    def register(
        self,
        node_id: str,
        *,
        now: float,
        metadata: Mapping[str, Any] | None = None,
        licence_ref: str | None = None,
        fingerprint: str | None = None,
    ) -> Node:
        if not isinstance(node_id, str) or not NODE_ID_PATTERN.match(node_id):
            raise RegistryError(
                f"node id {node_id!r} is not valid: 1-128 letters, digits, '_', '.', ':' or '-', "
                "starting with a letter or digit"
            )
        if node_id in RESERVED_NODE_IDS:
            raise RegistryError(f"node id {node_id!r} is reserved (the orchestrator's own place in the mesh)")
        if node_id in self.table.index:
            raise RegistryError(f"node {node_id!r} is already registered")
        slot = self.table.add(node_id, registered_at=now, metadata=metadata, licence_ref=licence_ref,
                              fingerprint=fingerprint)
        return self.table.view(slot)

    def register_many(self, node_ids: Sequence[str], *, now: float,
                      licence_refs: Sequence[str | None] | None = None) -> np.ndarray:
        """Register many new nodes at once (enrolment in bulk: no metadata, no fingerprint
        yet); each id is checked as ``register`` checks it, and one bad id refuses them all.

        :return: their slots in the node table.
        :raises RegistryError: naming the first id at fault; nothing is registered.
        """
        ids = list(node_ids)
        if licence_refs is not None and len(licence_refs) != len(ids):
            raise RegistryError(f"{len(licence_refs)} licence references for {len(ids)} node ids")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            twice = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise RegistryError(f"node {twice!r} appears twice")
        match = NODE_ID_PATTERN.match
        for node_id in ids:
            if type(node_id) is not str or not match(node_id):
                raise RegistryError(
                    f"node id {node_id!r} is not valid: 1-128 letters, digits, '_', '.', ':' or '-', "
                    "starting with a letter or digit")
        taken = RESERVED_NODE_IDS.intersection(ids) or \
            {ids[k] for k in np.flatnonzero(self.table.slots_of(ids) >= 0).tolist()}
        if taken:
            node_id = min(taken)
            why = "reserved (the orchestrator's own place in the mesh)" if node_id in RESERVED_NODE_IDS else \
                "already registered"
            raise RegistryError(f"node id {node_id!r} is {why}")
        return self.table.add_many(ids, registered_at=now, licence_refs=licence_refs)

    def deregister(self, node_id: str) -> Node:
        """Remove ``node_id``; return its last fields as a ``Node`` value (its slot is freed)."""
        try:
            node = self.table.remove(node_id)
        except KeyError:
            raise RegistryError(f"node {node_id!r} is not registered") from None
        self.metrics_inbox.forget(node_id)  # its detector row is freed (and cleared for the next node)
        return node

    def get(self, node_id: str) -> NodeView | None:
        slot = self.table.slot_of(node_id)
        return None if slot is None else self.table.view(slot)

    def __getitem__(self, node_id: str) -> NodeView:
        return self.table.view(self.table.index[node_id])

    def __contains__(self, node_id: object) -> bool:
        return self.table.slot_of(node_id) is not None  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.table)

    def __iter__(self) -> Iterator[Node]:
        return iter(NodeList(self.table))

    def nodes(self) -> NodeList:
        """The registered nodes now (a sequence of views; ``.table`` and ``.slots`` for columns)."""
        return NodeList(self.table)

    def ids(self) -> list[str]:
        """Every registered id, in slot order (a list of the caller's own)."""
        return self.table.ids_at(self.table.slots())

    def isolated_ids(self) -> list[str]:
        """The ids of the isolated nodes (read from the column)."""
        t = self.table
        slots = t.slots()
        ids = t.ids
        return [ids[s] for s in slots[t.isolated[slots]].tolist()]  # type: ignore[misc]

    def ids_with_status(self, status: NodeStatus) -> list[str]:
        """The ids of the nodes whose status is ``status`` (read from the columns)."""
        t = self.table
        slots = t.slots()
        ids = t.ids
        return [ids[s] for s in slots[t.status[slots] == STATUSES.index(status)].tolist()]  # type: ignore[misc]

    # -- heartbeats ---------------------------------------------------------------------

    def check(self, hb: Heartbeat, now: float) -> None:
        """Raise ``HeartbeatError`` if ``hb`` must not touch the registry. Changes nothing
        (safe to call from a request handler before queueing the heartbeat)."""
        node_id = hb.node_id
        node = self.get(node_id) if type(node_id) is str else None
        if node is None:
            if not isinstance(node_id, str) or not NODE_ID_PATTERN.match(node_id):
                raise HeartbeatError(str(node_id)[:64], "node_id", "not a valid node id", node_id)
            if node_id in RESERVED_NODE_IDS:
                raise HeartbeatError(node_id, "node_id", "reserved: the orchestrator's own id", node_id)
            if self.unknown_nodes == "reject":
                raise HeartbeatError(node_id, "node_id", "unknown node (heartbeat.unknown_nodes is 'reject')",
                                     node_id)
            if len(self.table) >= self.max_nodes:
                raise HeartbeatError(node_id, "node_id",
                                     f"registry full: heartbeat.max_nodes ({self.max_nodes}) nodes registered", node_id)
        ts = hb.timestamp
        if type(ts) is not float and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
            raise HeartbeatError(node_id, "timestamp", "not a finite number", ts)
        if not (ts <= now + self.max_clock_skew):  # also catches nan
            if not math.isfinite(ts):
                raise HeartbeatError(node_id, "timestamp", "not a finite number", ts)
            raise HeartbeatError(
                node_id, "timestamp",
                f"{ts - now:.1f}s in the future (allowed skew {self.max_clock_skew:g}s)", ts,
            )
        if node is not None and node.last_seen is not None and ts < node.last_seen - self.max_clock_skew:
            if not math.isfinite(ts):
                raise HeartbeatError(node_id, "timestamp", "not a finite number", ts)
            raise HeartbeatError(
                node_id, "timestamp",
                f"clock rollback: {node.last_seen - ts:.1f}s before the last heartbeat seen", ts,
            )
        check_content(hb, self)

    def take_observations(self) -> HeartbeatObservations:
        """The observations collected since the last call (and forget them): a list of
        ``Observation`` that also carries them as one ``ObservationBatch`` (``.batch``)."""
        return self.observations.take()

    def accept(self, hb: Heartbeat, now: float, *, checked: bool = False) -> Node:
        """Check ``hb`` and apply it. Older-than-seen heartbeats (within skew) are ignored.

        A heartbeat refused for a clock rollback is remembered on its node
        (``Node.last_rollback``): licence validation treats a node whose clock went back
        as suspect (``clock_rollback``).

        :param checked: ``hb`` passed ``check`` when it was received (the service's
            intake; ``intake.CheckedHeartbeat``): only what may have changed since is
            checked again (the node is still registered, the clock did not go back
            behind a heartbeat applied meanwhile). Its types, ranges, metadata and
            future skew (``now`` only grows) need no second look.
        :raises HeartbeatError: naming the field at fault; apart from that record, the
            registry is unchanged.
        """
        node = self.get(hb.node_id) if checked and type(hb.node_id) is str else None
        if node is None:
            try:
                self.check(hb, now)
            except HeartbeatError as exc:
                if exc.field == "timestamp" and exc.reason.startswith("clock rollback"):
                    self[hb.node_id].last_rollback = now
                raise
            node = self.get(hb.node_id)
        elif node.last_seen is not None and hb.timestamp < node.last_seen - self.max_clock_skew:
            node.last_rollback = now
            raise HeartbeatError(
                hb.node_id, "timestamp",
                f"clock rollback: {node.last_seen - hb.timestamp:.1f}s before the last heartbeat seen", hb.timestamp,
            )
        if node is None:
            node = self.register(hb.node_id, now=now)
            self.joined.append(node.id)
        last = node.last_seen
        if last is not None and hb.timestamp <= last:
            return node  # late duplicate or reordered delivery: nothing newer to learn
        node.last_seen = float(hb.timestamp)
        if hb.load is not None:
            node.load = float(hb.load)
        if hb.metadata:
            node.metadata = {**node.metadata, **hb.metadata}  # replaced, never mutated: snapshots share it
        if hb.fingerprint is not None:
            node.fingerprint = hb.fingerprint
        if hb.licence_ref is not None:
            node.licence_ref = hb.licence_ref
        if hb.observations:
            self.observations.add(node.id, hb.observations)
        if hb.metrics:
            self.metrics_inbox.add(node.id, float(hb.timestamp), hb.metrics)
        return node

    def accept_all(self, heartbeats: Iterable[Heartbeat], now: float, *,
                   trusted: bool = False) -> tuple[int, list[HeartbeatError]]:
        """Apply heartbeats in order; ``trusted``: they come from the builtin intake, so
        those made by it (``CheckedHeartbeat``) were checked on the way in. The column
        batches the intake drained with them (``intake.Drained.columns``) are applied where
        they were queued among the heartbeats (``Drained.marks``; ``accept_columns``)."""
        batch = heartbeats if isinstance(heartbeats, list) else list(heartbeats)
        columns = getattr(heartbeats, "columns", None) or ()  # ``intake.Drained``: column batches too
        marks = getattr(heartbeats, "marks", None) or [len(batch)] * len(columns)
        accepted, done = 0, 0
        rejected: list[HeartbeatError] = []
        for mark, block in zip(marks, columns):  # in the order they were queued
            if mark > done:
                got, refused = self._accept_objects(batch[done:mark], now, trusted)
                accepted += got
                rejected.extend(refused)
                done = mark
            got, refused = self.accept_columns(block, now)
            accepted += got
            rejected.extend(refused)
        if done < len(batch):
            got, refused = self._accept_objects(batch[done:] if done else batch, now, trusted)
            accepted += got
            rejected.extend(refused)
        return accepted, rejected

    def _accept_objects(self, batch: list[Heartbeat], now: float, trusted: bool) -> tuple[int, list[HeartbeatError]]:
        plain = (Heartbeat, CheckedHeartbeat)
        # the common heartbeat (a float timestamp and load, nothing else) of a known node
        # seen once in the batch is checked and applied over the columns at once; every
        # other goes through ``accept`` in order, which checks everything (same outcome)
        t = self.table
        if _all_common(batch):  # the usual batch: every field read column-wise, in C
            slots = t.slots_of(list(map(_NODE_ID, batch)))
            if slots.min(initial=0) < 0:
                known_at = np.flatnonzero(slots >= 0)
                picked = known_at.tolist()
                slots = slots[known_at]
                common_batch = [batch[i] for i in picked]
            else:
                picked = range(len(batch))  # type: ignore[assignment]
                common_batch = batch
            ts = np.fromiter(map(_TIMESTAMP, common_batch), np.float64, len(picked))
            loads = list(map(_LOAD, common_batch))
            load = np.array(loads, dtype=np.float64) if None not in loads else \
                np.array([_NAN if v is None else v for v in loads], dtype=np.float64)
        else:
            common = [type(h) in plain and type(h.node_id) is str and type(h.timestamp) is float
                      and ((v := h.load) is None or type(v) is float) and type(h.metadata) is dict
                      and not h.metadata and not h.observations and h.fingerprint is None and h.licence_ref is None
                      and h.metrics is None for h in batch]
            picked = [i for i, ok in enumerate(common) if ok]
            slots = t.slots_of([batch[i].node_id for i in picked])
            known_at = np.flatnonzero(slots >= 0)
            picked = [picked[k] for k in known_at.tolist()]
            slots = slots[known_at]
            ts = np.fromiter((batch[i].timestamp for i in picked), np.float64, len(picked))
            load = np.fromiter((_NAN if (v := batch[i].load) is None else v for i in picked), np.float64,
                               len(picked))
        last = t.last_seen[slots]
        with np.errstate(invalid="ignore"):
            fine = (ts <= now + self.max_clock_skew) & ~(ts < last - self.max_clock_skew) \
                & (np.isnan(load) | ((load >= 0) & (load <= self.max_load)))
        fine &= _once(slots)
        # a node seen twice, or also in a heartbeat of another shape, goes the ordered way
        rest = set(range(len(batch))).difference(np.asarray(picked, dtype=np.int64)[fine].tolist())
        if rest:
            others = {t.slot_of(batch[i].node_id) for i in rest}
            others.discard(None)
            if others:
                shared = np.isin(slots, np.fromiter(others, np.int64, len(others)))
                fine &= ~shared
                rest.update(np.asarray(picked, dtype=np.int64)[shared].tolist())
        slots, ts, load, last = slots[fine], ts[fine], load[fine], last[fine]
        newer = np.isnan(last) | (ts > last)  # an older one (within the skew) has nothing newer to say
        t.last_seen[slots[newer]] = ts[newer]
        with_load = newer & ~np.isnan(load)
        t.load[slots[with_load]] = load[with_load]
        accepted = int(fine.sum())
        rejected: list[HeartbeatError] = []
        for i in sorted(rest):
            hb = batch[i]
            try:
                self.accept(hb, now, checked=trusted and type(hb) is CheckedHeartbeat)
            except HeartbeatError as exc:
                rejected.append(exc)
            else:
                accepted += 1
        return accepted, rejected

    def accept_columns(self, batch: HeartbeatColumns, now: float) -> tuple[int, list[HeartbeatError]]:
        """Check and apply a batch of heartbeat columns (``intake.HeartbeatColumns``, one
        heartbeat per node) over the registry's columns: no object per heartbeat.

        Each heartbeat is judged alone, as ``accept`` judges one: a node the registry does
        not know goes through ``accept`` (registered or refused, as ``heartbeat.unknown_nodes``
        says); a timestamp too far ahead or behind the node's last one (a rollback, noted in
        ``last_rollback``) or a load above ``heartbeat.max_load`` is refused for that node
        alone; an older-than-seen timestamp (within the skew) teaches nothing and is ignored.

        :return: ``(accepted, rejected)`` as ``accept_all``.
        """
        t = self.table
        ids = batch.node_ids
        accepted = 0
        rejected: list[HeartbeatError] = []
        slots = t.slots_of(ids)  # the usual batch: every node known, its slots found in one bulk lookup
        if slots.min(initial=0) < 0:  # nodes the registry does not know: one by one, in full
            known_at = np.flatnonzero(slots >= 0)
            for i in np.flatnonzero(slots < 0).tolist():
                load = batch.load.item(i)
                try:
                    self.accept(Heartbeat(ids[i], batch.timestamp.item(i), None if load != load else load), now)
                except HeartbeatError as exc:
                    rejected.append(exc)
                else:
                    accepted += 1
            pick = known_at
            slots = slots[known_at]
            ts, load = batch.timestamp[pick], batch.load[pick]
        else:
            pick = None
            ts, load = batch.timestamp, batch.load
        last = t.last_seen[slots]
        skew = self.max_clock_skew
        with np.errstate(invalid="ignore"):
            future = ts > now + skew
            rolled = ~future & (ts < last - skew)
            heavy = ~future & ~rolled & (load > self.max_load)
        bad = future | rolled | heavy
        if bad.any():
            for k in np.flatnonzero(bad).tolist():
                i = k if pick is None else int(pick[k])
                stamp = float(ts[k])
                if future[k]:
                    rejected.append(HeartbeatError(ids[i], "timestamp", f"{stamp - now:.1f}s in the future (allowed "
                                                   f"skew {skew:g}s)", stamp))
                elif rolled[k]:
                    t.last_rollback[slots[k]] = now
                    rejected.append(HeartbeatError(ids[i], "timestamp", f"clock rollback: {float(last[k]) - stamp:.1f}s "
                                                   "before the last heartbeat seen", stamp))
                else:
                    rejected.append(HeartbeatError(ids[i], "load", f"out of range [0, {self.max_load:g}]",
                                                   float(load[k])))
            fine = ~bad
            slots, ts, load, last = slots[fine], ts[fine], load[fine], last[fine]
        newer = np.isnan(last) | (ts > last)
        t.last_seen[slots[newer]] = ts[newer]
        with_load = newer & ~np.isnan(load)
        t.load[slots[with_load]] = load[with_load]
        return accepted + len(slots), rejected

    # -- status -------------------------------------------------------------------------

    def status_of(self, node: Node, now: float) -> NodeStatus:
        seen = node.last_seen
        if seen is None:
            return NodeStatus.UNKNOWN if now - node.registered_at <= self.offline_after else NodeStatus.OFFLINE
        age = now - seen
        if age <= self.stale_after:
            return NodeStatus.ONLINE
        if age <= self.offline_after:
            return NodeStatus.STALE
        return NodeStatus.OFFLINE

    def refresh(self, now: float) -> dict[str, tuple[NodeStatus, NodeStatus]]:
        """Derive every node's status at ``now`` over the columns; return the changes
        ``{id: (old, new)}``."""
        changes = self.refresh_changes(now)
        return {node_id: (STATUSES[o], STATUSES[n])
                for node_id, o, n in zip(changes.ids, changes.old.tolist(), changes.new.tolist())}

    def refresh_changes(self, now: float) -> StatusChanges:
        """``refresh`` with the changes as columns (no object per node: on a first tick
        every node changes)."""
        t = self.table
        slots = t.slots()
        seen = t.last_seen[slots]
        never = np.isnan(seen)
        with np.errstate(invalid="ignore"):
            new = np.where(seen >= now - self.stale_after, ONLINE,
                           np.where(seen >= now - self.offline_after, STALE, OFFLINE)).astype(np.int8)
        new[never] = np.where(t.registered_at[slots][never] >= now - self.offline_after, UNKNOWN, OFFLINE)
        old = t.status[slots]
        moved = np.flatnonzero(new != old)
        t.status[slots] = new
        return StatusChanges(t.ids_at(slots[moved]), old[moved], new[moved], _STATUS_VALUES)


_NAN = float("nan")
_STATUS_VALUES = tuple(s.value for s in STATUSES)
_NODE_ID = operator.attrgetter("node_id")
_TIMESTAMP = operator.attrgetter("timestamp")
_LOAD = operator.attrgetter("load")
_PLAIN = frozenset({Heartbeat, CheckedHeartbeat})


def _all_common(batch: list[Heartbeat]) -> bool:
    """Whether every heartbeat of ``batch`` has the common shape (see ``accept_all``),
    asked one field at a time over the whole batch (C loops, no Python per heartbeat)."""
    if not batch or not _PLAIN.issuperset(map(type, batch)):
        return False
    if set(map(type, map(_NODE_ID, batch))) != {str} or set(map(type, map(_TIMESTAMP, batch))) != {float}:
        return False
    if not {float, type(None)}.issuperset(map(type, map(_LOAD, batch))):
        return False
    metadata = list(map(operator.attrgetter("metadata"), batch))
    if set(map(type, metadata)) != {dict} or any(metadata):
        return False
    getters = (operator.attrgetter("observations"), operator.attrgetter("fingerprint"),
               operator.attrgetter("licence_ref"), operator.attrgetter("metrics"))
    return not any(any(map(getter, batch)) for getter in getters[:1]) and \
        all(list(map(getter, batch)).count(None) == len(batch) for getter in getters[1:])


def _once(slots: np.ndarray) -> np.ndarray:
    """True where a slot appears only once in ``slots``."""
    if not len(slots):
        return np.ones(0, bool)
    counts = np.bincount(slots)
    return counts[slots] == 1
