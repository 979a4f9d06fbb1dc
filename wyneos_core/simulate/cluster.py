"""The simulated cluster: nodes that heartbeat, carry load, fail and acknowledge hops.

``SimCluster`` is an ordinary WyneOS plugin registered with the real ``Orchestrator``:

* ``wyneos_heartbeat`` (first) sends one heartbeat per live node per tick, with the
  node's load and its clock (skewed or frozen when a fault says so), all of them as
  one column batch into the orchestrator's intake (``intake.HeartbeatColumns``; a
  heartbeat that carries more, a licence reference or telemetry, is an object). A
  node sends nothing when it is down, or when a partition leaves it no physical path
  to the orchestrator;
* heartbeats name the licence each node presents (``licence_ref``): real signed
  licences (``wyneos_core.simulate.licences``) that the orchestrator's own licence
  step validates: an expiry is a real ``expires`` date reached in simulated time, a
  forgery a tampered document or one signed by an untrusted key;
* ``wyneos_deliver`` (first) is the transport: a hop to a node that is down or hung is
  not acknowledged, a lossy link loses hops at random (seeded), and a load action
  acknowledged by its target moves the planned load to the receiving neighbours.

* **witnesses**: every node the orchestrator hears reports, with its heartbeat, what
  it saw of each of its mesh neighbours this tick (``model.Observation``: reachable
  unless the neighbour is down or hung or the link between them is cut, a round-trip
  time, the neighbour's last heartbeat sequence). ``liar`` nodes invert what they see.
  Observations are only made when ``consensus.enabled`` (nothing else reads them),
  and reach the tick as columns (``simulate.observations``);
* ``orchestrator_link_loss`` cuts only the orchestrator's own link to its nodes: their
  heartbeats never arrive and the orchestrator's hops to them fail, while their
  peers still reach them and say so.

Faults start and end at the tick boundaries the scenario gives. A partition cuts the
links between a connected region and the rest in the simulated *network* only: the
region's heartbeats stop arriving and every hop into it goes unacknowledged. The
orchestrator's mesh is left alone, as in production, where nothing tells the
orchestrator which links failed: it must infer the partition from the silence.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order

from wyneos_core import hookimpl
from wyneos_core.intake import HeartbeatColumns
from wyneos_core.mesh import Mesh
from wyneos_core.model import ORIGIN, Action, Heartbeat, Observation
from wyneos_core.simulate.licences import SimLicences
from wyneos_core.simulate.observations import SimObservationLog, TickEdges
from wyneos_core.simulate.scenario import Fault, Scenario, pick_nodes, position_of
from wyneos_core.tick import TickContext

__all__ = ["SimCluster", "NODE_FAULTS", "fault_targets"]

#: faults that make a node itself unhealthy (isolating it is not a false isolation)
NODE_FAULTS = frozenset({"crash", "hang", "flapping", "licence_expiry", "forged_licence", "clock_skew"})
_LOAD_ACTIONS = frozenset({"reduce_load", "redistribute"})


class SimCluster:
    """The plugin that plays every node of a simulated cluster.

    The nodes are columns indexed by their position in ``ids`` (base load, probe
    latency, heartbeat sequence number; this tick's masks of who is down, hung, cut
    off...); what faults do is kept by node id, in sets and mappings as big as the
    faults. The physical network is a CSR adjacency over the positions, the
    orchestrator at position ``len(ids)``, with a flag per link a partition cut.
    """

    __wyneos_name__ = "simulated-cluster"

    def __init__(self, scenario: Scenario, ids: Sequence[str], mesh: Mesh) -> None:
        self.scenario = scenario
        self.ids = list(ids)
        n = self.n = len(self.ids)
        self.mesh = mesh
        rng = random.Random(scenario.seed)
        lo, hi = scenario.load["min"], scenario.load["max"]
        uniform = rng.uniform
        #: each node's own load, by position (``load_of`` adds what faults and moves change)
        self.base_load = np.array([round(uniform(lo, hi), 4) for _ in range(n)], dtype=np.float64)
        self.moved: dict[str, float] = {}
        self.rng = random.Random(scenario.seed + 1)
        self.targets = fault_targets(scenario, self.ids)
        self._partition_rng = random.Random(scenario.seed + 3)
        self.indptr, self.indices = _adjacency(mesh, self.ids)
        #: per adjacency entry: the link is cut (by a partition)
        self.link_cut = np.zeros(len(self.indices), dtype=bool)
        self.cut: dict[int, np.ndarray] = {}
        #: positions (the orchestrator's at ``n`` included) with a physical path to the
        #: orchestrator while a partition lasts; None: every one
        self.reachable: np.ndarray | None = None
        #: the vertex each adjacency entry starts from; whether it ends at a node (not the orchestrator)
        self.rows = np.repeat(np.arange(n + 1, dtype=np.int32), np.diff(self.indptr))
        self.to_node = self.indices < n
        # per tick state
        self.down: set[str] = set()
        self.hung: dict[str, float] = {}
        self.skew: dict[str, float] = {}
        self.extra: dict[str, float] = {}
        self.expired: set[str] = set()
        self.forged: set[str] = set()
        self.loss = 0.0
        self.started: set[int] = set()
        # load moves applied, by source node: (action id, [(receiver, amount)])
        self.moves_from: dict[str, tuple[str, list[tuple[str, float]]]] = {}
        self.counters = {"acked": 0, "refused": 0, "lost": 0, "moves": 0, "moved_load": 0.0}
        #: the signed licences of the run (set by the runner) and the nodes licence faults hit
        self.licences: SimLicences | None = None
        self.licence_nodes = sorted({n for f in scenario.faults if f.kind in ("licence_expiry", "forged_licence")
                                     for n in self.targets.get(f.index, ())})
        self.refs: dict[str, str] = {}
        self.last_scratch: dict[str, Any] = {}
        lat_rng = random.Random(scenario.seed + 4)
        lat = lat_rng.uniform
        self.latency = np.array([round(lat(0.2, 2.0), 3) for _ in range(n)], dtype=np.float64)
        #: heartbeats each node has sent (its sequence number), by position
        self.seq = np.zeros(n, dtype=np.int64)
        self.link_lost: set[str] = set()
        self.liars: set[str] = set()
        self.witnesses = True
        #: where the witnesses' observations go (set by ``attach``), and the last tick's
        self.observation_log: SimObservationLog | None = None
        self.last_edges: TickEdges | None = None
        #: the plugin that bends observations for trust faults (``trust_faults.SimWitnesses``)
        self.bender: Any = None
        #: the orchestrator's consensus section (for the summary)
        self.consensus_settings: dict[str, Any] = {}
        #: the nodes' telemetry and reported state (``predict_faults.SimTelemetry``), when played
        self.telemetry: Any = None

    def attach(self, registry: Any) -> None:
        """Hand the witnesses' observations to ``registry`` as columns (see ``observations``)."""
        self.observation_log = SimObservationLog(registry.observations, registry, self.position)
        registry.observations = self.observation_log

    def position(self, node_id: str) -> int | None:
        """``node_id``'s position in ``ids`` (``len(ids)`` for the orchestrator; None: not ours)."""
        return self.n if node_id == ORIGIN else position_of(node_id, self.ids)

    def mask(self, node_ids: Iterable[str]) -> np.ndarray:
        """A mask over the positions with ``node_ids`` set."""
        out = np.zeros(self.n, dtype=bool)
        found = [p for p in map(self.position, node_ids) if p is not None and p < self.n]
        out[found] = True
        return out

    # -- faults ------------------------------------------------------------------------------

    def begin_tick(self, tick: int, now: float) -> None:
        """Start and end faults at ``tick``; work out who is down, hung, skewed... now."""
        self.down = set()
        self.skew = {}
        self.extra = {}
        self.expired = set()
        self.forged = set()
        self.link_lost = set()
        self.liars = set()
        self.loss = 0.0
        hung: dict[str, float] = {}
        changed = False
        for fault in self.scenario.faults:
            active = fault.active(tick)
            if fault.kind == "partition":
                if active and fault.index not in self.cut:
                    self._partition(fault)
                    changed = True
                elif not active and fault.index in self.cut:
                    self.link_cut[self.cut.pop(fault.index)] = False
                    changed = True
                continue
            if not active:
                if fault.index in self.started and fault.kind == "overload":
                    self._undo_moves(self.targets[fault.index])
                self.started.discard(fault.index)
                continue
            self.started.add(fault.index)
            nodes = self.targets[fault.index]
            kind = fault.kind
            if kind == "crash":
                self.down.update(nodes)
            elif kind == "hang":
                for n in nodes:
                    hung[n] = self.hung.get(n, now)
            elif kind == "flapping":
                cycle = fault.params.get("down", 10) + fault.params.get("up", 3)
                if (tick - fault.at) % cycle < fault.params.get("down", 10):
                    self.down.update(nodes)
            elif kind == "overload":
                for n in nodes:
                    self.extra[n] = self.extra.get(n, 0.0) + fault.params.get("extra", 0.6)
            elif kind == "licence_expiry":
                self.expired.update(nodes)
            elif kind == "forged_licence":
                self.forged.update(nodes)
            elif kind == "clock_skew":
                for n in nodes:
                    self.skew[n] = float(fault.params.get("skew", 120.0))
            elif kind == "message_loss":
                self.loss = max(self.loss, float(fault.params.get("probability", 0.3)))
            elif kind == "orchestrator_link_loss":
                self.link_lost.update(nodes)
            elif kind == "liar":
                self.liars.update(nodes)
        self.hung = hung
        if self.telemetry is not None:
            self.telemetry.begin_tick(tick)
            self.down.update(self.telemetry.down)  # a leak or a full disk ran its course: crashed
        if self.licences is not None:
            self.refs = {n: self.licences.reference(n, tick, self.scenario.faults) for n in self.licence_nodes}
        if changed:
            self.reachable = self._reach() if self.cut else None

    def _partition(self, fault: Fault) -> None:
        if fault.nodes is not None:
            region = set(fault.nodes)
        else:
            size = fault.count if fault.count is not None else max(1, round((fault.fraction or 0) * len(self.ids)))
            region = self._region(size)
        self.targets[fault.index] = sorted(region)
        inside = np.zeros(self.n + 1, dtype=bool)
        inside[:self.n] = self.mask(region)
        crossing = np.flatnonzero((inside[self.rows] != inside[self.indices]) & ~self.link_cut)
        self.link_cut[crossing] = True
        self.cut[fault.index] = crossing

    def _neighbours(self, v: int) -> np.ndarray:
        """Positions linked to ``v`` by a link no partition cut."""
        lo, hi = self.indptr[v], self.indptr[v + 1]
        return self.indices[lo:hi][~self.link_cut[lo:hi]]

    def _region(self, size: int) -> set[str]:
        """``size`` nodes to cut off: what is left after growing the orchestrator's side.

        The orchestrator's side is grown breadth-first from the orchestrator (neighbours
        in seeded random order) until it holds all but ``size`` nodes, so it stays
        connected and exactly ``size`` nodes end up on the other side.
        """
        rng = self._partition_rng
        keep = len(self.ids) - size
        side = np.zeros(self.n + 1, dtype=bool)
        seen = np.zeros(self.n + 1, dtype=bool)
        seen[self.n] = True
        taken = 0
        frontier = [self.n]
        while frontier and taken < keep:
            nxt = []
            for v in frontier:
                neighbours = sorted(self._neighbours(v).tolist())  # ids sort as their positions
                rng.shuffle(neighbours)
                for w in neighbours:
                    if not seen[w] and taken < keep:
                        seen[w] = side[w] = True
                        taken += 1
                        nxt.append(w)
            frontier = nxt
        return {self.ids[p] for p in np.flatnonzero(~side[:self.n]).tolist()}

    def _reach(self) -> np.ndarray:
        """Positions with a path of uncut links to the orchestrator (its own included)."""
        keep = ~self.link_cut
        graph = csr_matrix((np.ones(int(keep.sum()), np.int8), (self.rows[keep], self.indices[keep])),
                           shape=(self.n + 1, self.n + 1))
        order = breadth_first_order(graph, self.n, directed=True, return_predecessors=False)
        out = np.zeros(self.n + 1, dtype=bool)
        out[order] = True
        return out

    def _undo_moves(self, nodes: Iterable[str]) -> None:
        """The burst behind an overload is over: the load it pushed away ends too."""
        for node in nodes:
            entry = self.moves_from.pop(node, None)
            if entry is None:
                continue
            for receiver, amount in entry[1]:
                self.moved[node] = self.moved.get(node, 0.0) + amount
                self.moved[receiver] = self.moved.get(receiver, 0.0) - amount

    def load_of(self, node_id: str) -> float:
        p = self.position(node_id)
        load = float(self.base_load[p]) + self.moved.get(node_id, 0.0) + self.extra.get(node_id, 0.0)
        return round(max(0.0, load), 4)

    def is_node_faulty(self, node_id: str) -> bool:
        return (node_id in self.down or node_id in self.hung or node_id in self.expired
                or node_id in self.forged or node_id in self.skew)

    def reaches(self, node_id: str) -> bool:
        """Whether ``node_id`` has a physical path to the orchestrator now."""
        reach = self.reachable
        if reach is None:
            return True
        p = self.position(node_id)
        return p is not None and bool(reach[p])

    # -- hooks -------------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def wyneos_heartbeat(self, ctx: TickContext) -> list[Heartbeat]:
        self.begin_tick(ctx.tick, ctx.now)
        if self.bender is not None:
            self.bender.begin(ctx.tick)
        now = ctx.now
        ids, n = self.ids, self.n
        down = self.mask(self.down)
        hung = self.mask(self.hung)
        self.seq = self.seq + ~(down | hung)  # a new array: last tick's observations keep theirs
        sends = ~down
        if self.reachable is not None:
            sends &= self.reachable[:n]
        heard = sends & ~self.mask(self.link_lost) if self.link_lost else sends  # lost: sent, never arrives
        ts = np.full(n, now, dtype=np.float64)
        for node_id, skew in self.skew.items():
            ts[self.position(node_id)] = now + skew
        for node_id, since in self.hung.items():
            ts[self.position(node_id)] = since
        load = self.base_load
        if self.moved or self.extra:
            load = load.copy()
            for node_id in set(self.moved).union(self.extra):
                load[self.position(node_id)] = self.load_of(node_id)
        if self.witnesses:
            observers = heard & ~hung
            self.last_edges = self._witness_edges(observers, down | hung, np.where(heard, ts, np.nan))
            if self.bender is not None:
                self.last_edges = self.bender.bend(self.last_edges, observers)
            if self.observation_log is not None:
                self.observation_log.put(self.last_edges)
        telemetry = self.telemetry
        if telemetry is not None:  # what the nodes report besides: one object per heartbeat
            sent = np.flatnonzero(heard)
            return [Heartbeat(node_id, t, v, telemetry.metadata_of(node_id), metrics=telemetry.metrics_of(node_id),
                              licence_ref=self.refs.get(node_id))
                    for node_id, t, v in zip(map(ids.__getitem__, sent.tolist()), ts[sent].tolist(),
                                             load[sent].tolist())]
        out = []
        if self.refs:  # a licence reference travels in a heartbeat object
            named = self.mask(self.refs) & heard
            out = [Heartbeat(ids[p], float(ts[p]), float(load[p]), licence_ref=self.refs[ids[p]])
                   for p in np.flatnonzero(named).tolist()]
            heard = heard & ~named
        sent = np.flatnonzero(heard)
        names = ids if len(sent) == n else list(map(ids.__getitem__, sent.tolist()))
        ctx.orchestrator.intake.put_columns(HeartbeatColumns(names, ts[sent], load[sent]))
        return out

    def _witness_edges(self, observers: np.ndarray, unanswering: np.ndarray, sent: np.ndarray) -> TickEdges:
        """What every observing node saw of its mesh neighbours this tick (inverted by a liar):
        a neighbour answers unless it is down or hung, or the link between them is cut."""
        picked = self._probes(observers)
        o, s = self.rows[picked], self.indices[picked]
        up = ~self.link_cut[picked] & ~unanswering[s]
        reachable = up != self.mask(self.liars)[o] if self.liars else up
        return TickEdges(self.ids, o, s, reachable, up, np.zeros(len(o), dtype=bool), self.latency, self.seq, sent)

    def probe_edges(self, observers: np.ndarray, unanswering: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(observer, subject, answered)`` of every probe of the ``observers`` over a link
        no partition cut (what a node sees when nobody asks it to report)."""
        picked = self._probes(observers, uncut=True)
        o, s = self.rows[picked], self.indices[picked]
        return o, s, ~unanswering[s]

    def _probes(self, observers: np.ndarray, uncut: bool = False) -> np.ndarray:
        """The adjacency entries from an observer to a node (over a link no partition cut)."""
        from_observer = np.zeros(self.n + 1, dtype=bool)
        from_observer[:self.n] = observers
        wanted = from_observer[self.rows] & self.to_node
        if uncut:
            wanted &= ~self.link_cut
        return np.flatnonzero(wanted)

    def _observe(self, node_id: str) -> tuple[Observation, ...]:
        """What ``node_id`` reported of its neighbours in the last tick."""
        p = self.position(node_id)
        if self.last_edges is None or p is None:
            return ()
        return self.last_edges.of_observer(p)

    @hookimpl(tryfirst=True)
    def wyneos_deliver(self, ctx: TickContext, action: Action, sender: str, receiver: str) -> bool:
        if sender == ORIGIN and receiver in self.link_lost:
            self.counters["refused"] += 1  # the orchestrator's own link to it is gone
            return False
        if receiver in self.down or receiver in self.hung:
            self.counters["refused"] += 1
            return False
        if self.reachable is not None and not (self.reaches(receiver) and self.reaches(sender)):
            self.counters["refused"] += 1  # the hop crosses (or sits behind) a failed link
            return False
        if self.loss and self.rng.random() < self.loss:
            self.counters["lost"] += 1
            return False
        if receiver == action.target and action.type in _LOAD_ACTIONS:
            self._apply_moves(action)
        self.counters["acked"] += 1
        return True

    @hookimpl
    def wyneos_tick_report(self, ctx: TickContext) -> None:
        self.last_scratch = dict(ctx.scratch)

    def _apply_moves(self, action: Action) -> None:
        source = action.target
        known = self.moves_from.get(source)
        if known is not None and known[0] == action.id:
            return  # already carried out (a redelivery)
        moves = [(n, float(a)) for n, a in action.params.get("moves", {}).items()
                 if self.position(n) is not None and n != ORIGIN]
        if not moves:
            return
        for receiver, amount in moves:
            self.moved[source] = self.moved.get(source, 0.0) - amount
            self.moved[receiver] = self.moved.get(receiver, 0.0) + amount
            self.counters["moved_load"] += amount
        self.counters["moves"] += len(moves)
        previous = known[1] if known is not None else []
        self.moves_from[source] = (action.id, previous + moves)


def fault_targets(scenario: Scenario, ids: Sequence[str]) -> dict[int, list[str]]:
    """Fault index -> the nodes it hits (seeded draws; partitions are drawn when they start)."""
    targets: dict[int, list[str]] = {}
    pick_rng = random.Random(scenario.seed + 2)
    for fault in scenario.faults:
        if fault.kind != "partition":
            targets[fault.index] = pick_nodes(fault, ids, pick_rng)
    return targets


def _adjacency(mesh: Mesh, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The mesh's links as CSR arrays over the positions of ``ids``, the orchestrator at
    ``len(ids)``; each vertex's neighbours in the mesh's own order (read from the mesh's
    arrays, no view per vertex)."""
    return mesh.adjacency([*ids, ORIGIN])
