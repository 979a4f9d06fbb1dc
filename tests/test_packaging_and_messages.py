"""Small things an operator meets: packaging metadata and how numbers read in messages."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.conftest import config_from
from wyneos_core.model import Heartbeat
from wyneos_core.tick import Orchestrator

ROOT = Path(__file__).resolve().parents[1]


def test_every_distribution_declares_its_licence_as_an_spdx_string():
    """setuptools warns on every install that a `license = {text = ...}` table stops working."""
    files = [ROOT / "pyproject.toml", *sorted((ROOT / "plugins").glob("*/pyproject.toml"))]
    assert len(files) == 3
    for path in files:
        data = tomllib.loads(path.read_text())
        assert data["project"]["license"] == "Apache-2.0", path
        assert not any(c.startswith("License ::") for c in data["project"].get("classifiers", [])), path
        assert "setuptools>=77" in data["build-system"]["requires"], path  # PEP 639 license expressions


def test_an_overload_message_never_reads_load_0_90_above_0_9():
    config = config_from("""
        nodes: [{id: a}]
        plugins: {disable: [licence]}
        state: {path: ':memory:'}
        healing: {overload_ticks: 1}
        """)
    with Orchestrator(config, load_entrypoints=False) as orch:
        orch.intake.put(Heartbeat("a", orch.clock(), load=0.9004))
        report = orch.tick()
    [action] = [a for a in report.actions if a.type == "reduce_load"]
    assert "load 0.9004 > 0.9" in action.reason, action.reason
