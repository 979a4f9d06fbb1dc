"""The simulator at fleet scale: nodes as columns, witness observations as columns.

The million-node run (`wyneos simulate builtin:single-crash --nodes 1000000 --ticks 15`,
docs/performance.md) takes the same code path as these runs of a few thousand nodes.
"""

from __future__ import annotations

from wyneos_core import hookimpl
from wyneos_core.model import ORIGIN
from wyneos_core.simulate import load_scenario, resolve_scenario, simulate
from wyneos_core.simulate.runner import EPOCH, build

SCENARIO = """\
scenario: witnesses
nodes: 60
ticks: 20
seed: 5
mesh: {topology: small_world, degree: 4, origin_links: 3}
faults:
  - {kind: crash, at: 2, nodes: [node-0007]}
  - {kind: clock_skew, at: 2, nodes: [node-0011], skew: 300}
  - {kind: liar, at: 1, nodes: [node-0020]}
"""


def test_a_large_fleet_meets_the_single_crash_expectations():
    scenario = load_scenario(resolve_scenario("builtin:single-crash")).with_overrides(nodes=20_000, ticks=15)
    result = simulate(scenario)
    s = result.summary
    assert result.failures == [] and s["expectations"]["failed"] == []
    assert s["nodes"] == 20_000 and s["ticks"] == 15
    crash = s["faults"][0]
    assert crash["detected"] == crash["acted"] == crash["tracked"] == 1
    assert crash["detection_ticks"]["max"] <= 4 and crash["action_ticks"]["max"] <= 9
    assert s["false_isolations"] == 0 and s["isolations"] == 1 and s["safety_stop_ticks"] == 0
    # every other node was heard every tick: the last tick counts one offline, the rest online
    assert result.samples[-1].counts["online"] == 20_000 - 1 and result.samples[-1].counts["offline"] == 1
    # the witnesses' reports reached consensus: the crashed node's neighbours confirmed it
    assert s["trust"]["observations"] > 4 * 20_000


def test_witness_observations_reach_the_tick_as_the_heartbeats_would_carry_them():
    scenario = load_scenario(text=SCENARIO)
    orchestrator, cluster, clock = build(scenario)
    seen = {}
    approved = []

    class Spy:
        @hookimpl
        def wyneos_healing(self, ctx):
            if ctx.tick <= 3:
                seen[ctx.tick] = list(ctx.observations)
            return []

        @hookimpl
        def wyneos_tick_report(self, ctx, report):
            approved.extend(e for e in report.lifecycle if e["state"] == "approved" and e["type"] == "isolate")

    orchestrator.pm.register(Spy(), "spy")
    interval = float(orchestrator.config["tick"]["interval"])
    adj = {v: list(orchestrator.mesh.graph.adj[v]) for v in cluster.ids}  # before isolations cut any link
    with orchestrator:
        for tick in range(1, 21):
            clock.now = EPOCH + tick * interval
            orchestrator.tick()
    crashed, skewed, liar = "node-0007", "node-0011", "node-0020"
    for tick in (1, 3):
        got = {(o.observer, o.subject): o for o in seen[tick]}
        assert len(got) == len(seen[tick])  # one report per neighbour
        expected = set()
        for v in cluster.ids:
            if tick >= 2 and v in (crashed, skewed):
                continue  # silent, or its heartbeat refused: nothing it says counts
            for w in adj[v]:
                if w == ORIGIN:
                    continue
                expected.add((v, w))
                obs = got.get((v, w))
                assert obs is not None, (tick, v, w)
                answered = not (tick >= 2 and w == crashed)
                assert obs.reachable == (answered != (v == liar)), (tick, v, w)
                assert (obs.rtt_ms is not None) == answered and obs.signed
                assert obs.last_seq == (1 if w == crashed and tick >= 2 else tick)
        assert set(got) == expected
    # the crashed node's isolation waited for its neighbours' word, and got it
    isolations = [e for e in approved if e["target"] == crashed]
    assert len(isolations) == 1 and isolations[0]["detail"].startswith("confirmed: ")
    assert len(isolations[0]["witnesses"]) >= 2 and liar not in isolations[0]["witnesses"]
