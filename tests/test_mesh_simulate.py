"""The simulator's witnesses: orchestrator link loss, lying witnesses, consensus on and off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wyneos_core.simulate import load_scenario, resolve_scenario, simulate
from wyneos_core.simulate.runner import compare_consensus, summary_text, with_consensus
from wyneos_core.yamlio import LocatedError

LINK_LOSS = """
scenario: t-link-loss
nodes: 80
ticks: 30
seed: 11
mesh: {topology: small_world, degree: 4, origin_links: 3}
faults:
  - {kind: orchestrator_link_loss, at: 3, fraction: 0.1}
  - {kind: crash, at: 8, count: 2}
"""


def fault(summary, kind):
    return next(f for f in summary["faults"] if f["kind"] == kind)


def test_link_loss_isolates_nobody_with_consensus_and_everyone_without():
    scenario = load_scenario(text=LINK_LOSS)
    on = simulate(scenario)
    off = simulate(with_consensus(scenario, False))
    lost = on.cluster.targets[0]
    assert len(lost) == 8
    # the orchestrator hears nothing from them either way
    assert all(on.orchestrator.registry[n].status.value == "offline" for n in lost)
    assert on.summary["false_isolations"] == 0
    assert not any(on.orchestrator.registry[n].isolated for n in lost)
    assert off.summary["false_isolations"] == 8
    assert all(off.orchestrator.registry[n].isolated for n in lost)
    # the real crashes are isolated just as fast with consensus as without
    for s in (on.summary, off.summary):
        crash = fault(s, "crash")
        assert crash["acted"] == 2 and crash["action_ticks"]["max"] <= 9
    assert fault(on.summary, "orchestrator_link_loss")["acted"] == 8  # held back, awaiting witnesses
    assert on.summary["consensus"]["held_nodes"] >= 8 and on.summary["consensus"]["enabled"]
    assert off.summary["consensus"] == {"enabled": False, "witnesses": 2, "held_nodes": 0, "discounted_witnesses": 0}


def test_liars_are_discounted_and_crashes_still_isolated_within_grace_plus_one():
    scenario = load_scenario(resolve_scenario("builtin:liars"))
    result = simulate(scenario)
    s = result.summary
    assert result.failures == []
    assert s["false_isolations"] == 0
    liars = fault(s, "liar")
    assert liars["detected"] == liars["nodes"] > 0  # every liar stopped counting as a witness
    assert s["consensus"]["discounted_witnesses"] == liars["nodes"]
    crash = fault(s, "crash")
    grace = 9  # offline after 40 s of 5 s ticks, plus the tick it is noticed in
    assert crash["acted"] == crash["nodes"] and crash["action_ticks"]["max"] <= grace
    # liars lie: what they reported about a healthy neighbour says unreachable
    liar = result.cluster.targets[0][0]
    seen = result.cluster._observe(liar)
    assert seen and all(not o.reachable for o in seen if o.subject not in result.cluster.down)


def test_compare_consensus_side_by_side():
    scenario = load_scenario(resolve_scenario("builtin:link-loss")).with_overrides(nodes=100)
    result = simulate(scenario)
    comparison = compare_consensus(result)
    on, off = comparison["with_consensus"], comparison["without_consensus"]
    assert on["false_isolations"] == 0 < off["false_isolations"] == fault(result.summary, "orchestrator_link_loss")["nodes"]
    assert fault(on, "crash")["action_ticks"] == fault(off, "crash")["action_ticks"]
    result.summary["consensus_comparison"] = comparison
    text = summary_text(result.summary)
    assert "consensus compared:" in text and "false isolations" in text.split("consensus compared:")[1]


def test_cli_compare_flag_writes_both(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "simulate", "builtin:link-loss", "--nodes", "60",
                           "--compare-consensus", "--out", "out", "--no-progress"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "with consensus" in proc.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    both = summary["consensus_comparison"]
    assert both["with_consensus"]["false_isolations"] == 0
    assert both["without_consensus"]["false_isolations"] == 6


@pytest.mark.parametrize("line, field", [
    ("  - {kind: liar, at: 2}", "faults[0]"),
    ("  - {kind: orchestrator_link_loss, at: 2, fraction: 1.5}", "faults[0].fraction"),
    ("  - {kind: liars, at: 2, count: 1}", "faults[0].kind"),
])
def test_new_fault_kinds_are_checked(line, field):
    text = "scenario: bad\nnodes: 10\nfaults:\n" + line + "\n"
    with pytest.raises(LocatedError) as info:
        load_scenario(text=text)
    assert info.value.line == 4 and info.value.field == field
