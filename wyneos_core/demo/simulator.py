"""A simulated cluster that sends heartbeats in-process, for the demo and for tests.

Each node behaves as the ``demo.behaviours`` section of the config says (default:
healthy, with a steady pseudo-random load drawn from ``demo.seed``):

``overloaded``   reports ``load`` (default 0.97) every tick
``crash``        stops reporting from tick ``after_tick`` on
``flapping``     reports only on every other block of ``period`` ticks
``skewed``       reports timestamps ``skew`` seconds in the future
``missing``      keys of ``drop_metadata`` are left out of its metadata
``impostor``     (any id) a node the orchestrator does not know, sending heartbeats
"""

from __future__ import annotations

import random
from typing import Any

from wyneos_core import hookimpl
from wyneos_core.demo.licences import demo_fingerprint
from wyneos_core.model import Heartbeat
from wyneos_core.tick import TickContext

__all__ = ["DemoCluster"]


class DemoCluster:
    """The simulator plugin; registered by the orchestrator when ``demo.enabled`` is true."""

    __wyneos_name__ = "demo-cluster"

    def __init__(self, settings: dict[str, Any]) -> None:
        self.behaviours: dict[str, dict[str, Any]] = settings.get("behaviours", {})
        self.base_metadata: dict[str, Any] = settings.get("metadata", {})
        rng = random.Random(settings.get("seed", 0))
        self._rng = rng
        self._loads: dict[str, float] = {}
        self.settings_keys: str = settings.get("keys", ".wyneos/demo-keys")

    @hookimpl
    def wyneos_configure(self, config: Any) -> None:
        """Make the demo's real signed licences (issuer key at first run, see ``demo.licences``)."""
        import time

        from wyneos_core.demo.licences import ensure_demo_licences

        settings = config["licence"]
        keys = config.resolve(self.settings_keys)
        ensure_demo_licences(keys, config.resolve(settings["directory"]), config["nodes"], time.time())

    def _load(self, node_id: str) -> float:
        if node_id not in self._loads:
            self._loads[node_id] = round(self._rng.uniform(0.15, 0.7), 2)
        return self._loads[node_id]

    @hookimpl(tryfirst=True)
    def wyneos_heartbeat(self, ctx: TickContext) -> list[Heartbeat]:
        out = []
        node_ids = [n.id for n in ctx.registry]
        node_ids += [i for i, b in self.behaviours.items() if b.get("kind") == "impostor" and i not in ctx.registry]
        for node_id in node_ids:
            b = self.behaviours.get(node_id, {})
            kind = b.get("kind", "healthy")
            if kind == "crash" and ctx.tick >= b.get("after_tick", 1):
                continue
            if kind == "flapping" and (ctx.tick // b.get("period", 1)) % 2 == 1:
                continue
            load = b.get("load", 0.97) if kind == "overloaded" else self._load(node_id)
            ts = ctx.now + (b.get("skew", 120.0) if kind == "skewed" else 0.0)
            metadata = dict(self.base_metadata)
            metadata.update(b.get("metadata", {}))
            for key in b.get("drop_metadata", []):
                metadata.pop(key, None)
            out.append(Heartbeat(node_id, ts, load, metadata, fingerprint=demo_fingerprint(node_id)))
        return out
