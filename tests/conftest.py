"""Shared fixtures: a fake clock, configs from YAML text, orchestrators on small clusters."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import pytest

from wyneos_core.config import Config, load_config
from wyneos_core.model import Heartbeat
from wyneos_core.tick import Orchestrator


class FakeClock:
    """A clock the test moves by hand: ``clock()`` is now, ``clock.advance(s)`` moves it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def config_from(text: str, **sections: object) -> Config:
    """A config from YAML text (dedented), with report printing and JSON file off."""
    config = load_config(text=textwrap.dedent(text))
    config["report"]["stdout"] = "none"
    config["report"]["json_path"] = None
    for name, value in sections.items():
        config.data[name].update(value)  # type: ignore[arg-type]
    return config


def cluster_yaml(n: int, *, topology: str = "ring", extra: str = "", disable: str = "[licence]") -> str:
    """A cluster of ``n`` nodes ``n01``..; the licence step is off unless ``disable`` says otherwise."""
    nodes = "\n".join(f"  - {{id: n{i:02d}, licence: lic-{i:02d}}}" for i in range(1, n + 1))
    return f"""
heartbeat: {{interval: 5, stale_after: 15, offline_after: 40, max_clock_skew: 30}}
mesh: {{topology: {topology}, origin_links: 2, seed: 1}}
plugins: {{disable: {disable}}}
nodes:
{nodes}
{extra}
"""


@pytest.fixture
def make_orchestrator(clock: FakeClock) -> Callable[..., Orchestrator]:
    """Build an orchestrator on a config text, without entry points or a state file."""

    created: list[Orchestrator] = []

    def make(text: str, *, plugins=(), store=False, sections: dict | None = None) -> Orchestrator:
        orch = Orchestrator(config_from(text, **(sections or {})), clock=clock, plugins=plugins,
                            load_entrypoints=False, store=store)
        created.append(orch)
        return orch

    yield make
    for orch in created:
        orch.stop()


def beat(orch: Orchestrator, clock: FakeClock, *node_ids: str, load: float = 0.3, **metadata: object) -> None:
    """Queue one heartbeat, stamped now, for each node id."""
    orch.intake.put_many(Heartbeat(i, clock(), load, dict(metadata)) for i in node_ids)
