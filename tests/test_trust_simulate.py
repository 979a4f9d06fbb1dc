"""Trust faults in simulation: colluders hold little of global trust, degrading nodes
drop a tier, honest nodes stay trusted; scenario errors; the summary's trust section."""

from __future__ import annotations

import textwrap

import pytest

from wyneos_core.simulate import load_scenario, resolve_scenario, simulate
from wyneos_core.simulate.runner import summary_text
from wyneos_core.yamlio import LocatedError


def run(name: str, **overrides):
    scenario = load_scenario(resolve_scenario(f"builtin:{name}")).with_overrides(**overrides)
    return simulate(scenario)


def test_ten_percent_colluders_hold_under_five_percent_of_global_trust():
    result = run("colluders")
    trust = result.summary["trust"]
    assert trust["colluders"] == 50 and trust["colluder_fraction"] == 0.1
    assert trust["colluder_share"] < 0.05
    assert trust["honest_median"] >= 0.7
    assert result.failures == []
    # the colluders' tiers: none of them is trusted at the end, the honest nodes are
    colluders = set(result.cluster.targets[0])
    nodes = list(result.orchestrator.registry)
    assert all(n.trust_tier != "trusted" for n in nodes if n.id in colluders)
    honest = [n for n in nodes if n.id not in colluders]
    assert sum(n.trust_tier == "trusted" for n in honest) >= 0.95 * len(honest)
    assert "50 colluders (10%) hold" in summary_text(result.summary)


def test_without_the_credibility_of_witnesses_colluders_would_trap_trust():
    """The same run with every witness fully credible (the plain EigenTrust row) shows
    what the defence is worth: the colluding clique holds several times more."""
    from wyneos_core.trust import engine as engine_module

    original = engine_module.local_trust

    def plain(src, dst, w, n, credibility=None):
        return original(src, dst, w, n, None)

    engine_module.local_trust = plain
    try:
        plain_share = run("colluders", ticks=15).summary["trust"]["colluder_share"]
    finally:
        engine_module.local_trust = original
    defended = run("colluders", ticks=15).summary["trust"]["colluder_share"]
    assert plain_share > 3 * defended


def test_degrading_nodes_drop_a_tier_and_the_others_stay():
    result = run("degrading")
    trust = result.summary["trust"]
    assert trust["degrading"] == trust["degrading_dropped"] == 5
    assert trust["ticks_to_drop_tier"]["max"] <= 30
    degrading = set(result.cluster.targets[0])
    for node in result.orchestrator.registry:
        if node.id in degrading:
            assert node.trust_tier in ("probation", "untrusted")
        else:
            assert node.trust_tier == "trusted"
    assert result.failures == []
    assert "5/5 degrading node(s) dropped a tier" in summary_text(result.summary)


def test_an_unmet_trust_expectation_is_reported(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""\
        scenario: strict
        nodes: 60
        ticks: 6
        faults:
          - {kind: colluders, at: 1, fraction: 0.5}
        expect: {max_colluder_share: 0.0001}
        """))
    result = simulate(load_scenario(path))
    assert any("colluders hold" in f for f in result.failures)


@pytest.mark.parametrize("text, where", [
    ("  - {kind: degrading, at: 2, count: 1, rate: 0}\n", "faults[0].rate"),
    ("  - {kind: colluders, at: 2}\n", "faults[0]"),
])
def test_bad_trust_faults_are_refused_naming_the_field(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text("scenario: bad\nnodes: 10\nticks: 5\nfaults:\n" + text)
    with pytest.raises(LocatedError) as info:
        load_scenario(path)
    assert where in str(info.value)
