"""Fault-injection simulation: the real tick against a simulated cluster.

``load_scenario`` reads a YAML scenario, ``simulate`` runs it with the real
``Orchestrator`` on a fake clock and returns the measured ``SimResult``;
``write_outputs`` writes the summary, timeline and plot. ``wyneos simulate`` is the
command line of all three; see ``docs/simulation.md``.
"""

from __future__ import annotations

from wyneos_core.simulate.runner import SimClock, SimResult, simulate, summary_text, write_outputs
from wyneos_core.simulate.scenario import (
    FAULT_KINDS,
    Fault,
    Scenario,
    builtin_scenarios,
    load_scenario,
    node_ids,
    resolve_scenario,
)

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "Scenario",
    "SimClock",
    "SimResult",
    "builtin_scenarios",
    "load_scenario",
    "node_ids",
    "resolve_scenario",
    "simulate",
    "summary_text",
    "write_outputs",
]
