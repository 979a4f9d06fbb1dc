"""The demo cluster behind ``wyneos run`` with no config: a simulator plugin and its config.

The demo is a plugin like any other: whoever builds an orchestrator on a config with
``demo.enabled`` registers it (the CLI does, through ``demo_plugins``); the tick does not
know it exists.

>>> from wyneos_core.config import load_config
>>> [type(p).__name__ for p in demo_plugins(load_config(None))]
['DemoCluster']
>>> demo_plugins(load_config(text="nodes: [{id: a}]\\n"))
[]
"""

from __future__ import annotations

from typing import Any

__all__ = ["demo_plugins"]


def demo_plugins(config: Any) -> list[Any]:
    """The plugins to register for ``config``'s ``demo`` section: the simulated cluster
    when ``demo.enabled`` is true, else none."""
    if not config["demo"].get("enabled"):
        return []
    from wyneos_core.demo.simulator import DemoCluster

    return [DemoCluster(config["demo"])]
