"""Trust faults in simulation: colluding witnesses and slowly degrading nodes.

``SimWitnesses`` is a plugin registered beside ``SimCluster``. When the simulated nodes
report their own witness observations with their heartbeats (the compliance mesh's
simulated witnesses), it bends those for the faults below; otherwise it makes the
observations itself every tick (what each live node sees of its mesh neighbours over
the simulated network: a neighbour is reachable when it is up, not hung and the link
between them is not cut) and puts them where the trust step reads them
(``ctx.scratch["observations"]``, see ``wyneos_core/trust/observations.py``). It plays
two fault kinds:

* ``colluders`` (``count`` or ``fraction``): a group whose members vouch for one another
  (each reports other members reachable, neighbour or not) and report every other
  neighbour down;
* ``degrading``: nodes whose behaviour slowly worsens. From the fault's start, with a
  chance growing by ``rate`` each tick (``min(1, rate * ticks since start)``), a
  degrading node sends a malformed heartbeat besides its good one (refused by the
  registry: a refused message), and each of its observations comes out wrong.

It measures, every tick, the colluders' share of global trust (the EigenTrust vector),
the median trust of honest nodes, and each degrading node's tier, from which
``summary()`` makes the simulation summary's ``trust`` section.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

import numpy as np

from wyneos_core import hookimpl
from wyneos_core.model import Heartbeat, TickReport
from wyneos_core.simulate.metrics import fleet_column
from wyneos_core.simulate.observations import TickEdges
from wyneos_core.simulate.scenario import Scenario
from wyneos_core.tick import TickContext
from wyneos_core.trust.observations import SCRATCH_KEY, ObservationBatch
from wyneos_core.trust.tiers import tier_rank

__all__ = ["SimWitnesses", "TRUST_FAULTS", "check_trust_expectations", "trust_text"]

TRUST_FAULTS = ("colluders", "degrading")
#: a colluder vouches for at most this many other colluders per tick (drawn anew each tick)
MAX_VOUCHES = 50


class SimWitnesses:
    """The plugin that makes the simulated cluster's witness observations."""

    __wyneos_name__ = "simulated-witnesses"

    def __init__(self, scenario: Scenario, cluster: Any, max_observations: int = 32) -> None:
        self.scenario = scenario
        self.cluster = cluster
        self.max_observations = max_observations
        #: the cluster's nodes report their own witness observations with their heartbeats
        #: (the compliance mesh's simulated witnesses): the faults then bend those
        #: instead of this plugin making observations of its own
        self.bends = bool(getattr(cluster, "witnesses", False))
        if self.bends:
            cluster.bender = self
        self.rng = random.Random(scenario.seed + 7)
        self.faults = [f for f in scenario.faults if f.kind in TRUST_FAULTS]
        self.colluders: set[str] = set()
        self.degrading: dict[str, float] = {}  # node -> chance of misbehaving this tick
        # measures, per tick
        self.shares: list[tuple[int, float]] = []
        self.honest_medians: list[tuple[int, float]] = []
        self.start_rank: dict[str, int] = {}
        self.dropped_at: dict[str, int] = {}
        self.observations = 0

    def begin(self, tick: int) -> None:
        """Which nodes collude and which degrade (and how likely they misbehave) in ``tick``."""
        self.colluders = set()
        self.degrading = {}
        for fault in self.faults:
            if not fault.active(tick):
                continue
            nodes = self.cluster.targets.get(fault.index, [])
            if fault.kind == "colluders":
                self.colluders.update(nodes)
            else:
                rate = float(fault.params.get("rate", 0.02))
                chance = min(1.0, rate * (tick - fault.at + 1))
                for n in nodes:
                    self.degrading[n] = max(self.degrading.get(n, 0.0), chance)

    def _affected(self, observers: np.ndarray) -> list[int]:
        """Positions of the colluding or degrading nodes among ``observers``, in order."""
        position = self.cluster.position
        found = {position(n) for n in self.colluders.union(self.degrading)}
        return sorted(p for p in found if p is not None and observers[p])

    def _twist(self, p: int, subjects: np.ndarray, reachable: np.ndarray, room: int,
               members: list[str], member_mask: np.ndarray) -> list[int]:
        """Bend, in place, what the node at ``p`` reports of ``subjects``; return the
        positions of the colluders it vouches for besides (at most ``room``)."""
        node_id = self.cluster.ids[p]
        if node_id in self.colluders:
            reachable[:] = member_mask[subjects]
            have = set(subjects.tolist())
            position = self.cluster.position
            pool = [m for m in members if m != node_id and position(m) not in have]
            if room <= 0 or not pool:
                return []
            return [position(m) for m in (pool if len(pool) <= room else self.rng.sample(pool, room))]
        wrong = self.degrading.get(node_id, 0.0)
        if wrong:
            rng = self.rng
            for k in range(len(reachable)):
                if rng.random() < wrong:
                    reachable[k] = not reachable[k]
        return []

    def _twist_all(self, observer: np.ndarray, subject: np.ndarray, reachable: np.ndarray,
                   observers: np.ndarray, room: int | None) -> tuple[list[int], list[int]]:
        """Bend, in place, what every colluding or degrading node among ``observers``
        reports (``observer`` grouped by node, in order); return the vouches they add
        besides, as ``(vouchers, vouched)`` positions. ``room``: vouches per colluder at
        most (None: what its report has room for, ``max_observations``)."""
        affected = self._affected(observers) if self.colluders or self.degrading else []
        vouchers: list[int] = []
        vouched: list[int] = []
        if not affected:
            return vouchers, vouched
        starts = np.searchsorted(observer, affected, "left").tolist()
        ends = np.searchsorted(observer, affected, "right").tolist()
        members = sorted(self.colluders)
        member_mask = self.cluster.mask(self.colluders)
        for p, lo, hi in zip(affected, starts, ends):
            extra = self._twist(p, subject[lo:hi], reachable[lo:hi],
                                self.max_observations - (hi - lo) if room is None else room, members, member_mask)
            vouchers += [p] * len(extra)
            vouched += extra
        return vouchers, vouched

    def bend(self, edges: TickEdges, observers: np.ndarray) -> TickEdges:
        """The colluders' and degrading nodes' version of what the ``observers`` saw."""
        if self.colluders or self.degrading:
            reachable = edges.reachable.copy()
            vouchers, vouched = self._twist_all(edges.observer, edges.subject, reachable, observers, None)
            count = len(vouched)
            edges = TickEdges(edges.ids, np.concatenate([edges.observer, np.array(vouchers, edges.observer.dtype)]),
                              np.concatenate([edges.subject, np.array(vouched, edges.subject.dtype)]),
                              np.concatenate([reachable, np.ones(count, bool)]),
                              np.concatenate([edges.up, np.zeros(count, bool)]),
                              np.concatenate([edges.vouch, np.ones(count, bool)]), edges.latency, edges.seq, edges.sent)
        self.observations += len(edges)
        return edges

    @hookimpl(trylast=True)
    def wyneos_heartbeat(self, ctx: TickContext) -> list[Heartbeat]:
        """Observations into the tick; malformed heartbeats of degrading nodes."""
        if self.bends:
            return self._malformed(ctx)  # the observations came with the heartbeats, bent
        self.begin(ctx.tick)
        cluster = self.cluster
        down, unanswering = cluster.mask(cluster.down), cluster.mask(set(cluster.down).union(cluster.hung))
        observers = ~down if cluster.reachable is None else ~down & cluster.reachable[:cluster.n]
        o, s, seen = cluster.probe_edges(observers, unanswering)  # grouped by observer, in order
        vouchers, vouched = self._twist_all(o, s, seen, observers, MAX_VOUCHES)
        if vouched:
            o = np.concatenate([o, np.array(vouchers, o.dtype)])
            s = np.concatenate([s, np.array(vouched, s.dtype)])
            seen = np.concatenate([seen, np.ones(len(vouched), bool)])
        found = ctx.scratch.get(SCRATCH_KEY)
        if found is None:
            ctx.scratch[SCRATCH_KEY] = ObservationBatch(cluster.ids, o, s, seen)
        else:
            ids = cluster.ids
            found.extend((ids[a], ids[b], r) for a, b, r in zip(o.tolist(), s.tolist(), seen.tolist()))
        self.observations += len(o)
        return self._malformed(ctx)

    def _malformed(self, ctx: TickContext) -> list[Heartbeat]:
        down, rng = self.cluster.down, self.rng
        return [Heartbeat(node_id, ctx.now, -1.0)  # load out of range: refused by the registry
                for node_id, chance in self.degrading.items() if node_id not in down and rng.random() < chance]

    @hookimpl
    def wyneos_tick_report(self, ctx: TickContext, report: TickReport) -> None:
        state = getattr(ctx.orchestrator, "_trust_state", None)
        if state is None:
            return
        engine = state.engine
        if self.colluders:
            index = engine.index
            trust = engine.global_trust
            total = float(sum(float(trust[index[i]]) for i in self.cluster.ids if i in index))
            if total > 0:
                held = sum(float(trust[index[i]]) for i in self.colluders if i in index)
                self.shares.append((report.tick, held / total))
        faulty = self.colluders | set(self.degrading) | self.cluster.down | set(self.cluster.hung)
        honest = fleet_column(ctx.registry, "trust", exclude=faulty)
        honest = honest[~np.isnan(honest)]
        if len(honest):
            self.honest_medians.append((report.tick, float(np.median(honest))))
        if self.degrading:
            for node_id in self.degrading:
                node = ctx.registry.get(node_id)
                rank = None if node is None else tier_rank(node.trust_tier)
                if rank is None:
                    continue
                start = self.start_rank.setdefault(node_id, rank)
                if rank < start and node_id not in self.dropped_at:
                    self.dropped_at[node_id] = report.tick

    def summary(self) -> dict[str, Any]:
        """The simulation summary's ``trust`` section."""
        out: dict[str, Any] = {"observations": self.observations}
        colluder_faults = [f for f in self.faults if f.kind == "colluders"]
        if colluder_faults:
            targets = {n for f in colluder_faults for n in self.cluster.targets.get(f.index, [])}
            out["colluders"] = len(targets)
            out["colluder_fraction"] = round(len(targets) / max(1, len(self.cluster.ids)), 4)
            last = self.shares[-1][1] if self.shares else None
            out["colluder_share"] = None if last is None else round(last, 6)
            out["colluder_share_max"] = round(max(s for _, s in self.shares), 6) if self.shares else None
        out["honest_median"] = round(self.honest_medians[-1][1], 4) if self.honest_medians else None
        degrading = [f for f in self.faults if f.kind == "degrading"]
        if degrading:
            drops = {}
            for fault in degrading:
                for node_id in self.cluster.targets.get(fault.index, []):
                    at = self.dropped_at.get(node_id)
                    drops[node_id] = None if at is None else at - fault.at
            found = sorted(v for v in drops.values() if v is not None)
            out["degrading"] = len(drops)
            out["degrading_dropped"] = len(found)
            out["ticks_to_drop_tier"] = ({"min": found[0], "median": statistics.median(found), "max": found[-1]}
                                         if found else None)
        return out


def check_trust_expectations(trust: dict[str, Any], expect: dict[str, Any]) -> list[str]:
    """The trust expectations of a scenario that the run did not meet."""
    failures = []
    limit = expect.get("max_colluder_share")
    if limit is not None:
        share = trust.get("colluder_share")
        if share is None or share >= limit:
            failures.append(f"colluders hold {share} of global trust, expected under {limit}")
    limit = expect.get("max_ticks_to_drop_tier")
    if limit is not None:
        drop = trust.get("ticks_to_drop_tier")
        if drop is None or trust.get("degrading_dropped", 0) < trust.get("degrading", 0) or drop["max"] > limit:
            failures.append(f"degrading nodes dropped a tier: {trust.get('degrading_dropped', 0)}/"
                            f"{trust.get('degrading', 0)}, worst {drop['max'] if drop else None} tick(s), "
                            f"expected all within {limit}")
    limit = expect.get("min_honest_median")
    if limit is not None and (trust.get("honest_median") is None or trust["honest_median"] < limit):
        failures.append(f"honest median trust {trust.get('honest_median')}, expected at least {limit}")
    return failures


def trust_text(trust: dict[str, Any]) -> str:
    """The summary's trust line(s) for ``wyneos simulate``'s text output."""
    median = trust.get("honest_median")
    parts = [f"trust: honest median {median:.3f}" if median is not None else "trust: no scores"]
    if "colluder_share" in trust:
        share = trust["colluder_share"]
        parts.append(f"{trust['colluders']} colluders ({trust['colluder_fraction']:.0%}) hold "
                     + (f"{share:.2%}" if share is not None else "n/a") + " of global trust")
    if "degrading" in trust:
        drop = trust["ticks_to_drop_tier"]
        parts.append(f"{trust['degrading_dropped']}/{trust['degrading']} degrading node(s) dropped a tier"
                     + (f" after {drop['median']:g} ticks (max {drop['max']})" if drop else ""))
    return "; ".join(parts)
