"""The simulated cluster: nodes that heartbeat, carry load, fail and acknowledge hops.

``SimCluster`` is an ordinary WyneOS plugin registered with the real ``Orchestrator``:

* ``wyneos_heartbeat`` (first) sends one heartbeat per live node per tick, with the
  node's load and its clock (skewed or frozen when a fault says so). A node sends
  nothing when it is down, or when a partition leaves it no physical path to the
  orchestrator;
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
  Observations are only made when ``consensus.enabled`` (nothing else reads them);
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

from wyneos_core import hookimpl
from wyneos_core.mesh import Mesh
from wyneos_core.model import ORIGIN, Action, Heartbeat, Observation
from wyneos_core.simulate.licences import SimLicences
from wyneos_core.simulate.scenario import Fault, Scenario, pick_nodes
from wyneos_core.tick import TickContext

__all__ = ["SimCluster", "NODE_FAULTS", "fault_targets"]

#: faults that make a node itself unhealthy (isolating it is not a false isolation)
NODE_FAULTS = frozenset({"crash", "hang", "flapping", "licence_expiry", "forged_licence", "clock_skew"})
_LOAD_ACTIONS = frozenset({"reduce_load", "redistribute"})


class SimCluster:
    """The plugin that plays every node of a simulated cluster."""

    __wyneos_name__ = "simulated-cluster"

    def __init__(self, scenario: Scenario, ids: Sequence[str], mesh: Mesh) -> None:
        self.scenario = scenario
        self.ids = list(ids)
        self.mesh = mesh
        rng = random.Random(scenario.seed)
        lo, hi = scenario.load["min"], scenario.load["max"]
        self.base_load = {i: round(rng.uniform(lo, hi), 4) for i in self.ids}
        self.moved: dict[str, float] = {}
        self.rng = random.Random(scenario.seed + 1)
        self.targets = fault_targets(scenario, self.ids)
        self._partition_rng = random.Random(scenario.seed + 3)
        self.physical = {v: set(mesh.graph.adj[v]) for v in mesh.graph}
        self.cut: dict[int, list[tuple[str, str]]] = {}
        self.reachable: set[str] | None = None
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
        # witnesses: each node probes its configured mesh neighbours
        self.neighbours = {v: tuple(w for w in mesh.graph.adj[v] if w != ORIGIN) for v in self.ids}
        lat_rng = random.Random(scenario.seed + 4)
        self.latency = {v: round(lat_rng.uniform(0.2, 2.0), 3) for v in self.ids}
        #: heartbeats each node has sent (its sequence number)
        self.seq: dict[str, int] = dict.fromkeys(self.ids, 0)
        self.link_lost: set[str] = set()
        self.liars: set[str] = set()
        self.witnesses = True
        #: the orchestrator's consensus section (for the summary)
        self.consensus_settings: dict[str, Any] = {}
        #: the nodes' telemetry and reported state (``predict_faults.SimTelemetry``), when played
        self.telemetry: Any = None

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
                    self._heal(fault)
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
            self.reachable = _reach(self.physical) if self.cut else None

    def _partition(self, fault: Fault) -> None:
        if fault.nodes is not None:
            region = set(fault.nodes)
        else:
            size = fault.count if fault.count is not None else max(1, round((fault.fraction or 0) * len(self.ids)))
            region = self._region(size)
        self.targets[fault.index] = sorted(region)
        edges = [(a, b) for a in region for b in self.physical.get(a, ()) if b not in region]
        for a, b in edges:
            self.physical[a].discard(b)
            self.physical[b].discard(a)
        self.cut[fault.index] = edges

    def _region(self, size: int) -> set[str]:
        """``size`` nodes to cut off: what is left after growing the orchestrator's side.

        The orchestrator's side is grown breadth-first from the orchestrator (neighbours
        in seeded random order) until it holds all but ``size`` nodes, so it stays
        connected and exactly ``size`` nodes end up on the other side.
        """
        rng = self._partition_rng
        keep = len(self.ids) - size
        side: set[str] = set()
        seen = {ORIGIN}
        frontier = [ORIGIN]
        while frontier and len(side) < keep:
            nxt = []
            for v in frontier:
                neighbours = sorted(self.physical[v])
                rng.shuffle(neighbours)
                for w in neighbours:
                    if w not in seen and len(side) < keep:
                        seen.add(w)
                        side.add(w)
                        nxt.append(w)
            frontier = nxt
        return {i for i in self.ids if i not in side}

    def _heal(self, fault: Fault) -> None:
        for a, b in self.cut.pop(fault.index):
            self.physical[a].add(b)
            self.physical[b].add(a)

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
        load = self.base_load[node_id] + self.moved.get(node_id, 0.0) + self.extra.get(node_id, 0.0)
        return round(max(0.0, load), 4)

    def is_node_faulty(self, node_id: str) -> bool:
        return (node_id in self.down or node_id in self.hung or node_id in self.expired
                or node_id in self.forged or node_id in self.skew)

    # -- hooks -------------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def wyneos_heartbeat(self, ctx: TickContext) -> list[Heartbeat]:
        self.begin_tick(ctx.tick, ctx.now)
        now = ctx.now
        down, hung, skew, reach = self.down, self.hung, self.skew, self.reachable
        base, moved, extra = self.base_load, self.moved, self.extra
        refs = self.refs
        lost = self.link_lost
        seq = self.seq
        for node_id in self.ids:
            if node_id not in down and node_id not in hung:
                seq[node_id] += 1
        witnesses = self.witnesses
        telemetry = self.telemetry
        out = []
        for node_id in self.ids:
            if node_id in down or (reach is not None and node_id not in reach):
                continue
            if lost and node_id in lost:
                continue  # sent, but the orchestrator's own link to it is gone
            ts = hung.get(node_id)
            if ts is None:
                ts = now + skew.get(node_id, 0.0)
            load = base[node_id]
            if moved or extra:
                load = max(0.0, load + moved.get(node_id, 0.0) + extra.get(node_id, 0.0))
            observations = self._observe(node_id) if witnesses and node_id not in hung else ()
            if telemetry is not None:
                out.append(Heartbeat(node_id, ts, round(load, 4), telemetry.metadata_of(node_id),
                                     licence_ref=refs.get(node_id) if refs else None, observations=observations,
                                     metrics=telemetry.metrics_of(node_id)))
                continue
            out.append(Heartbeat(node_id, ts, round(load, 4), licence_ref=refs.get(node_id) if refs else None,
                                 observations=observations))
        return out

    def _observe(self, node_id: str) -> tuple[Observation, ...]:
        """What ``node_id`` saw of its neighbours this tick (inverted by a liar)."""
        down, hung, physical = self.down, self.hung, self.physical[node_id]
        liar = node_id in self.liars
        lat = self.latency
        mine = lat[node_id]
        seq = self.seq
        out = []
        for w in self.neighbours[node_id]:
            up = w in physical and w not in down and w not in hung
            out.append(Observation(node_id, w, up != liar, round(mine + lat[w], 3) if up else None, seq[w], True))
        return tuple(out)

    @hookimpl(tryfirst=True)
    def wyneos_deliver(self, ctx: TickContext, action: Action, sender: str, receiver: str) -> bool:
        if sender == ORIGIN and receiver in self.link_lost:
            self.counters["refused"] += 1  # the orchestrator's own link to it is gone
            return False
        if receiver in self.down or receiver in self.hung:
            self.counters["refused"] += 1
            return False
        reach = self.reachable
        if reach is not None and (receiver not in reach or sender not in reach):
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
        moves = [(n, float(a)) for n, a in action.params.get("moves", {}).items() if n in self.base_load]
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


def _reach(adj: dict[str, set[str]]) -> set[str]:
    seen = {ORIGIN}
    frontier = [ORIGIN]
    while frontier:
        nxt = []
        for v in frontier:
            for w in adj.get(v, ()):
                if w not in seen:
                    seen.add(w)
                    nxt.append(w)
        frontier = nxt
    return seen
