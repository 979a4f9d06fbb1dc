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

import dataclasses
import random
import statistics
from typing import Any

from wyneos_core import hookimpl
from wyneos_core.model import ORIGIN, Heartbeat, TickReport
from wyneos_core.simulate.scenario import Scenario
from wyneos_core.tick import TickContext
from wyneos_core.trust.observations import SCRATCH_KEY
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
        self.bends = bool(getattr(cluster, "witnesses", False)) and hasattr(cluster, "_observe")
        if self.bends:
            self._wrap(cluster)
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

    def _begin(self, tick: int) -> None:
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

    def _wrap(self, cluster: Any) -> None:
        begin, observe = cluster.begin_tick, cluster._observe

        def begin_tick(tick: int, now: float) -> None:
            begin(tick, now)
            self._begin(tick)

        def bent(node_id: str) -> tuple[Any, ...]:
            return self._bend(node_id, observe(node_id))

        cluster.begin_tick = begin_tick
        cluster._observe = bent

    def _bend(self, node_id: str, seen: tuple[Any, ...]) -> tuple[Any, ...]:
        """A colluder's or a degrading node's version of what it saw."""
        colluders = self.colluders
        wrong = self.degrading.get(node_id, 0.0)
        if node_id in colluders:
            out = [dataclasses.replace(o, reachable=o.subject in colluders) for o in seen]
            room = self.max_observations - len(out)
            pool = [m for m in sorted(colluders) if m != node_id and m not in {o.subject for o in out}]
            if room > 0 and pool:
                from wyneos_core.model import Observation  # the compliance mesh's witness model

                for other in (pool if len(pool) <= room else self.rng.sample(pool, room)):
                    out.append(Observation(node_id, other, True, None, None, True))
            seen = tuple(out)
        elif wrong:
            rng = self.rng
            seen = tuple(dataclasses.replace(o, reachable=not o.reachable) if rng.random() < wrong else o
                         for o in seen)
        self.observations += len(seen)
        return seen

    @hookimpl(trylast=True)
    def wyneos_heartbeat(self, ctx: TickContext) -> list[Heartbeat]:
        """Observations into the tick; malformed heartbeats of degrading nodes."""
        if self.bends:
            return self._malformed(ctx)  # the observations came with the heartbeats, bent
        self._begin(ctx.tick)
        cluster = self.cluster
        down, hung, reach = cluster.down, cluster.hung, cluster.reachable
        rng = self.rng
        colluders = self.colluders
        degrading = self.degrading
        out: list[tuple[str, str, bool]] = []
        members = sorted(colluders)
        for node_id in cluster.ids:
            if node_id in down or (reach is not None and node_id not in reach):
                continue  # a node that cannot send reports nothing
            wrong = degrading.get(node_id, 0.0)
            for other in cluster.physical.get(node_id, ()):
                if other == ORIGIN:
                    continue
                seen = other not in down and other not in hung
                if node_id in colluders:
                    seen = other in colluders
                elif wrong and rng.random() < wrong:
                    seen = not seen
                out.append((node_id, other, seen))
            if node_id in colluders and len(members) > 1:
                pool = [m for m in members if m != node_id]
                for other in (pool if len(pool) <= MAX_VOUCHES else rng.sample(pool, MAX_VOUCHES)):
                    out.append((node_id, other, True))
        ctx.scratch.setdefault(SCRATCH_KEY, []).extend(out)
        self.observations += len(out)
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
        index = engine.index
        trust = engine.global_trust
        ids = self.cluster.ids
        total = sum(float(trust[index[i]]) for i in ids if i in index)
        if self.colluders and total > 0:
            held = sum(float(trust[index[i]]) for i in self.colluders if i in index)
            self.shares.append((report.tick, held / total))
        faulty = self.colluders | set(self.degrading) | self.cluster.down | set(self.cluster.hung)
        honest = [n.trust for n in report.nodes if n.id not in faulty and n.trust is not None]
        if honest:
            self.honest_medians.append((report.tick, statistics.median(honest)))
        if self.degrading:
            tiers = {n.id: tier_rank(n.trust_tier) for n in report.nodes if n.id in self.degrading}
            for node_id, rank in tiers.items():
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
