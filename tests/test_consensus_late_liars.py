"""Late liars (issue 18 item 15): witnesses that told the truth for a while, then lie about
a node cut off from the orchestrator, isolate nobody - with the default config (the
shipped scenario) and, over several seeds, with 35 % of the nodes cut off and every
safety stop off."""

from __future__ import annotations

from wyneos_core.consensus import ConsensusSettings, ConsensusState
from wyneos_core.simulate import load_scenario, resolve_scenario, simulate

SEEDS = """
scenario: late-liars-seeds
nodes: 300
ticks: 20
seed: {seed}
mesh: {{topology: small_world, degree: 4, origin_links: 3}}
config: {{decide: {{max_unhealthy_fraction: 1.0, max_partitioned_fraction: 1.0, max_correlated_fraction: 1.0}}}}
faults:
  - {{kind: orchestrator_link_loss, at: 5, fraction: 0.35}}
  - {{kind: liar, at: 15, fraction: 0.1}}
"""


def test_the_shipped_late_liars_scenario_isolates_nobody():
    result = simulate(load_scenario(resolve_scenario("builtin:late-liars")))
    assert result.failures == []
    s = result.summary
    assert s["false_isolations"] == 0
    liars = next(f for f in s["faults"] if f["kind"] == "liar")
    assert s["consensus"]["discounted_witnesses"] == liars["nodes"] > 0  # each liar stopped counting


def test_late_liars_isolate_nobody_over_twelve_seeds_with_the_safety_stops_off():
    false = {seed: simulate(load_scenario(text=SEEDS.format(seed=seed))).summary["false_isolations"]
             for seed in range(1, 13)}
    assert false == {seed: 0 for seed in range(1, 13)}


def test_a_turned_witness_confirms_only_after_the_hold():
    state = ConsensusState(ConsensusSettings())
    hold = state.turn_hold
    assert hold == 4  # a liar naming one heard node reaches min_contradictions=3 in its 4th tick
    from wyneos_core.consensus import Suspicion

    sus = Suspicion("n-3", since=5)
    always = lambda _: 1.0  # noqa: E731
    for tick in range(5, 15):  # both witnesses reach it: a node cut off from the orchestrator only
        sus.report("w-1", tick, True)
        sus.report("w-2", tick, True)
    for tick in range(15, 15 + hold):  # then both say they cannot
        sus.report("w-1", tick, False)
        sus.report("w-2", tick, False)
        assert sus.tally(tick, 3, always, hold)[0] == 0.0
    tick = 15 + hold
    sus.report("w-1", tick, False)
    sus.report("w-2", tick, False)
    assert sus.tally(tick, 3, always, hold)[:3] == (2.0, 0.0, ["w-1", "w-2"])  # a real death is confirmed, late
    # a witness that never reached it during the suspicion confirms at once
    fresh = Suspicion("n-4", since=5)
    fresh.report("w-3", 6, False)
    assert fresh.tally(6, 3, always, hold)[0] == 1.0
